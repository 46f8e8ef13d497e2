//! Spawning the catalog in-process and talking to it.

use std::sync::Once;

use catalog::{config::Settings, startup::Application, store};
use dockyard_messaging::testing::{TestExchange, amqp_url};
use dockyard_runtime::{config, identity::IdentityConfig, server::HttpConfig, telemetry};
use dockyard_testkit::TestDatabase;
use reqwest::{Response, header};
use serde_json::{Value, json};
use tokio::sync::oneshot;

static TELEMETRY: Once = Once::new();

/// Logs go to stdout with `TEST_LOG` set, and nowhere otherwise.
pub fn init_telemetry() {
    TELEMETRY.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            telemetry::init(telemetry::LogFormat::Pretty);
        } else {
            telemetry::init_with_writer(telemetry::LogFormat::Json, std::io::sink);
        }
    });
}

/// A running catalog with its own database.
pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub db: TestDatabase,
    pub exchange: TestExchange,
    /// Dropping it stops the server.
    _stop: oneshot::Sender<()>,
}

/// Settings for an app on a free loopback port using `database_url` and `exchange`.
pub fn settings(database_url: &str, exchange: &TestExchange) -> Settings {
    Settings {
        http: HttpConfig::ephemeral(),
        database: config::from_vars([("DATABASE_URL", database_url)])
            .expect("a valid test DATABASE_URL"),
        broker: config::from_vars([
            ("AMQP_URL", amqp_url().as_str()),
            ("AMQP_EXCHANGE", exchange.name()),
        ])
        .expect("a valid test AMQP_URL"),
        identity: IdentityConfig::default(),
    }
}

/// Starts a catalog on a migrated fresh database.
pub async fn spawn_app() -> TestApp {
    let db = TestDatabase::create("catalog").await;
    let exchange = TestExchange::new(dockyard_contracts::topology());
    let settings = settings(db.url(), &exchange);
    store::migrate(&settings.database)
        .await
        .expect("migrating the test database");
    let (address, stop) = start(&settings);
    TestApp {
        address,
        client: client(),
        db,
        exchange,
        _stop: stop,
    }
}

/// Starts an application with `settings`; returns its base URL and its stop switch.
pub fn start(settings: &Settings) -> (String, oneshot::Sender<()>) {
    init_telemetry();
    let app = Application::build(settings).expect("building the app");
    let address = format!("http://127.0.0.1:{}", app.port());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    (address, stop)
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a reqwest client")
}

/// A valid creation body with the given SKU.
pub fn product_body(sku: &str) -> Value {
    json!({
        "sku": sku,
        "name": format!("Product {sku}"),
        "description": "A test product.",
        "price": {"amount_minor": 1299, "currency": "EUR"},
        "stock": 10
    })
}

impl TestApp {
    /// Starts another instance on the same database and exchange (competing consumers).
    pub fn spawn_replica(&self) -> oneshot::Sender<()> {
        start(&settings(self.db.url(), &self.exchange)).1
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn get(&self, path: &str) -> Response {
        self.client.get(self.url(path)).send().await.expect("GET")
    }

    pub async fn post_product(&self, body: &Value) -> Response {
        self.client
            .post(self.url("/products"))
            .json(body)
            .send()
            .await
            .expect("POST /products")
    }

    /// Creates a product and returns its JSON representation and ETag.
    pub async fn create_product(&self, sku: &str) -> (Value, String) {
        let response = self.post_product(&product_body(sku)).await;
        assert_eq!(response.status(), 201, "creating {sku}");
        let etag = etag_of(&response);
        (response.json().await.expect("product JSON"), etag)
    }

    pub async fn patch(&self, id: &str, if_match: Option<&str>, body: &Value) -> Response {
        let mut request = self
            .client
            .patch(self.url(&format!("/products/{id}")))
            .json(body);
        if let Some(tag) = if_match {
            request = request.header(header::IF_MATCH, tag);
        }
        request.send().await.expect("PATCH")
    }
}

pub fn etag_of(response: &Response) -> String {
    response
        .headers()
        .get(header::ETAG)
        .expect("an ETag header")
        .to_str()
        .expect("an ASCII ETag")
        .to_owned()
}

/// Asserts an RFC 9457 body with `status`, and returns it.
pub async fn assert_problem(response: Response, status: u16) -> Value {
    assert_eq!(response.status(), status, "status");
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );
    let problem: Value = response.json().await.expect("a problem body");
    assert_eq!(problem["status"], status);
    assert!(problem["title"].is_string(), "{problem}");
    assert!(problem["type"].is_string(), "{problem}");
    problem
}
