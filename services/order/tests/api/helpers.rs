//! A small Dockyard: catalog and order applications wired to one test exchange.

use std::{sync::Once, time::Duration};

use dockyard_messaging::testing::{TestExchange, amqp_url};
use dockyard_runtime::{config, identity::IdentityConfig, server::HttpConfig, telemetry};
use dockyard_testkit::TestDatabase;
use reqwest::Response;
use serde_json::{Value, json};
use tokio::{sync::oneshot, task::JoinHandle};
use uuid::Uuid;

static TELEMETRY: Once = Once::new();

fn init_telemetry() {
    TELEMETRY.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            telemetry::init(telemetry::LogFormat::Pretty);
        } else {
            telemetry::init_with_writer(telemetry::LogFormat::Json, std::io::sink);
        }
    });
}

/// A running application: its URL, its stop switch, and its task (finished once drained).
pub struct Running {
    pub address: String,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Stops it gracefully and waits until it has.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

fn run<F>(port: u16, future: F) -> Running
where
    F: FnOnce(oneshot::Receiver<()>) -> JoinHandle<anyhow::Result<()>>,
{
    let (stop, stopped) = oneshot::channel();
    Running {
        address: format!("http://127.0.0.1:{port}"),
        stop,
        task: future(stopped),
    }
}

/// Everything a test of the saga needs.
pub struct Platform {
    pub client: reqwest::Client,
    pub exchange: TestExchange,
    pub catalog_db: TestDatabase,
    pub order_db: TestDatabase,
    pub catalog: Option<Running>,
    pub order: Running,
}

fn broker(exchange: &TestExchange, url: &str) -> dockyard_messaging::BrokerConfig {
    config::from_vars([("AMQP_URL", url), ("AMQP_EXCHANGE", exchange.name())]).unwrap()
}

fn database(url: &str) -> dockyard_runtime::database::DatabaseConfig {
    config::from_vars([("DATABASE_URL", url)]).unwrap()
}

/// Starts a catalog on `db` and `exchange`.
pub fn start_catalog(db: &TestDatabase, exchange: &TestExchange) -> Running {
    init_telemetry();
    let settings = catalog::config::Settings {
        http: HttpConfig::ephemeral(),
        database: database(db.url()),
        broker: broker(exchange, &amqp_url()),
        identity: IdentityConfig::default(),
    };
    let app = catalog::startup::Application::build(&settings).unwrap();
    run(app.port(), |stopped| {
        tokio::spawn(app.run_until_stopped(async move {
            let _ = stopped.await;
        }))
    })
}

/// Starts an order service reaching the broker at `amqp` and the catalog at `catalog_url`.
pub fn start_order(
    db: &TestDatabase,
    exchange: &TestExchange,
    amqp: &str,
    catalog_url: &str,
) -> Running {
    start_order_with(db, exchange, amqp, catalog_url, &[])
}

/// The same, with `vars` for the saga's deadline and admission control.
pub fn start_order_with(
    db: &TestDatabase,
    exchange: &TestExchange,
    amqp: &str,
    catalog_url: &str,
    vars: &[(&str, &str)],
) -> Running {
    init_telemetry();
    let settings = order::config::Settings {
        http: HttpConfig::ephemeral(),
        database: database(db.url()),
        broker: broker(exchange, amqp),
        catalog: config::from_vars([("CATALOG_URL", catalog_url)]).unwrap(),
        saga: config::from_vars(vars.iter().copied()).unwrap(),
        admission: config::from_vars(vars.iter().copied()).unwrap(),
        identity: config::from_vars(vars.iter().copied()).unwrap(),
    };
    let app = order::startup::Application::build(&settings).unwrap();
    run(app.port(), |stopped| {
        tokio::spawn(app.run_until_stopped(async move {
            let _ = stopped.await;
        }))
    })
}

/// Fresh, migrated databases for both services.
pub async fn databases() -> (TestDatabase, TestDatabase) {
    let catalog_db = TestDatabase::create("catalog").await;
    let order_db = TestDatabase::create("order").await;
    catalog::store::migrate(&database(catalog_db.url()))
        .await
        .unwrap();
    order::store::migrate(&database(order_db.url()))
        .await
        .unwrap();
    (catalog_db, order_db)
}

/// Catalog and order, both up, on the real broker.
pub async fn spawn_platform() -> Platform {
    let (catalog_db, order_db) = databases().await;
    let exchange = TestExchange::new(dockyard_contracts::topology());
    let catalog = start_catalog(&catalog_db, &exchange);
    let order = start_order(&order_db, &exchange, &amqp_url(), &catalog.address);
    Platform::new(exchange, (catalog_db, order_db), Some(catalog), order)
}

pub fn order_body(customer_id: Uuid, lines: &[(&str, i64)]) -> Value {
    let lines: Vec<Value> = lines
        .iter()
        .map(|(id, quantity)| json!({"product_id": id, "quantity": quantity}))
        .collect();
    json!({"customer_id": customer_id, "lines": lines})
}

impl Platform {
    /// The platform made of these parts (`catalog` is `None` while a test keeps it down).
    pub fn new(
        exchange: TestExchange,
        (catalog_db, order_db): (TestDatabase, TestDatabase),
        catalog: Option<Running>,
        order: Running,
    ) -> Self {
        Self {
            client: reqwest::Client::new(),
            exchange,
            catalog_db,
            order_db,
            catalog,
            order,
        }
    }

    pub fn catalog_address(&self) -> &str {
        &self
            .catalog
            .as_ref()
            .expect("the catalog is running")
            .address
    }

    /// Creates a product priced 12.99 EUR with `stock` units; returns its id.
    pub async fn product(&self, sku: &str, stock: i64) -> String {
        Self::product_via(self.catalog_address(), sku, stock).await
    }

    /// The same, on the catalog at `address`.
    pub async fn product_via(address: &str, sku: &str, stock: i64) -> String {
        let body = json!({"sku": sku, "name": sku, "price": {"amount_minor": 1299, "currency": "EUR"}, "stock": stock});
        let response = reqwest::Client::new()
            .post(format!("{address}/products"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        response.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn stock(&self, product_id: &str) -> i64 {
        let product: Value = self
            .client
            .get(format!("{}/products/{product_id}", self.catalog_address()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        product["stock"].as_i64().unwrap()
    }

    /// The value of an unlabelled metric on the order's `/metrics`, if it is there.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        self.metric_at(&self.order.address, name).await
    }

    /// The value of the metric `name` (its labels included, as exposed) on the `/metrics` of
    /// the service at `address`, if it is there.
    async fn metric_at(&self, address: &str, name: &str) -> Option<f64> {
        let text = self
            .client
            .get(format!("{address}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    /// Waits up to 10 s for the metric `name` to satisfy `expected`; returns its last value.
    pub async fn metric_until(&self, name: &str, expected: impl Fn(f64) -> bool) -> f64 {
        self.metric_at_until(&self.order.address, name, expected)
            .await
    }

    /// The same, on the catalog's `/metrics`.
    pub async fn catalog_metric_until(&self, name: &str, expected: impl Fn(f64) -> bool) -> f64 {
        self.metric_at_until(self.catalog_address(), name, expected)
            .await
    }

    async fn metric_at_until(
        &self,
        address: &str,
        name: &str,
        expected: impl Fn(f64) -> bool,
    ) -> f64 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let value = self.metric_at(address, name).await;
            if let Some(value) = value.filter(|v| expected(*v)) {
                return value;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} stayed at {value:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every event of the saga so far has been handled: nothing waits in the
    /// order's outbox, and the catalog's consumer has applied `catalog_events` events (the
    /// order's answers come after them).
    pub async fn saga_caught_up(&self, catalog_events: u32) {
        self.metric_until("dockyard_outbox_backlog", |n| n < 0.5)
            .await;
        self.catalog_metric_until(
            r#"dockyard_consumer_events_total{consumer="catalog",outcome="applied"}"#,
            |n| (n - f64::from(catalog_events)).abs() < 0.5,
        )
        .await;
    }

    /// Waits up to 10 s until the order service reports its broker connection `up` (it is
    /// ready before that: the broker is shared, so its absence only degrades).
    pub async fn broker_connected(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let report: Value = self
                .client
                .get(format!("{}/health/ready", self.order.address))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if report["checks"]["broker"]["status"] == "up" {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the broker stayed away: {report}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits up to 10 s until admission control has counted the pending orders with the broker
    /// connected (its count has run to completion on the order's database). Until then, the
    /// orders it finds pending on its first count are excused as placed during an outage; from
    /// then on, those placed count against the backlog.
    pub async fn admission_counting(&self) {
        let pool = self.order_db.pool().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let counted: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND state = 'idle' AND query = $1",
            )
            .bind(order::admission::COUNT_PENDING)
            .fetch_one(&pool)
            .await
            .unwrap();
            if counted > 0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "admission control never counted the pending orders"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        pool.close().await;
    }

    pub async fn place(&self, key: &str, body: &Value) -> Response {
        self.client
            .post(format!("{}/orders", self.order.address))
            .header("idempotency-key", key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Places an order under a fresh key; returns its id.
    pub async fn place_ok(&self, body: &Value) -> String {
        let response = self.place(&Uuid::new_v4().to_string(), body).await;
        assert_eq!(response.status(), 202);
        response.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn order(&self, id: &str) -> Value {
        self.client
            .get(format!("{}/orders/{id}", self.order.address))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn cancel(&self, id: &str) -> Response {
        self.client
            .post(format!("{}/orders/{id}/cancel", self.order.address))
            .send()
            .await
            .unwrap()
    }

    /// Polls the order until it leaves `pending` (at most 15 s); returns it.
    pub async fn settled(&self, id: &str) -> Value {
        for _ in 0..300 {
            let order = self.order(id).await;
            if order["status"] != "pending" {
                return order;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("order {id} stayed pending");
    }

    /// Polls until `product_id` has `expected` units (at most 10 s).
    pub async fn stock_becomes(&self, product_id: &str, expected: i64) {
        let mut stock = 0;
        for _ in 0..200 {
            stock = self.stock(product_id).await;
            if stock == expected {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("stock of {product_id} is {stock}, expected {expected}");
    }

    pub async fn orders_in_database(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM orders")
            .fetch_one(&self.order_db.pool().await)
            .await
            .unwrap()
    }
}
