//! End to end: the whole platform as processes (the machinery of `cargo xtask up`), against
//! the real PostgreSQL and RabbitMQ, on a database pair and an exchange of its own.
//! Needs the service binaries in `target/debug` (`cargo test --workspace` builds them).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use serde_json::{Value, json};
use xtask::{database, sandbox::Sandbox, stack};

/// A [`Sandbox`] removed when dropped, even when the test panics.
struct Guard(Sandbox);

impl Drop for Guard {
    fn drop(&mut self) {
        let sandbox = self.0.clone();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(sandbox.cleanup());
        })
        .join()
        .unwrap();
    }
}

/// A platform of the test's own: `catalog_instances` catalogs, one order service, a gateway.
async fn platform(catalog_instances: usize) -> (stack::Stack, Guard) {
    let sandbox = Sandbox::new("e2e");
    let options = sandbox.options(catalog_instances, stack::bin_dir(false));
    (stack::Stack::start(options).await.unwrap(), Guard(sandbox))
}

#[derive(Debug, Default)]
struct Tally {
    ok: usize,
    /// Answers other than 2xx, or requests cut after they were sent.
    failed: Vec<String>,
    /// Connections refused: the request was never sent (the gateway had stopped listening).
    refused: usize,
}

/// `clients` loops of GETs through the gateway until `stop`; a fresh connection per request
/// when `fresh` (so a request is either sent whole or refused).
fn load(
    gateway: &str,
    product: &str,
    clients: usize,
    fresh: bool,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Tally>> {
    (0..clients)
        .map(|i| {
            let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(20));
            if fresh {
                builder = builder.pool_max_idle_per_host(0);
            }
            let client = builder.build().unwrap();
            let url = if i % 2 == 0 {
                format!("{gateway}/api/catalog/products?limit=5")
            } else {
                format!("{gateway}/api/catalog/products/{product}")
            };
            let stop = Arc::clone(stop);
            tokio::spawn(async move {
                let mut tally = Tally::default();
                while !stop.load(Ordering::Relaxed) {
                    match client.get(&url).send().await {
                        Ok(response) if response.status().is_success() => tally.ok += 1,
                        Ok(response) => tally.failed.push(response.status().to_string()),
                        Err(error) if error.is_connect() => {
                            tally.refused += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(error) => tally.failed.push(error.to_string()),
                    }
                }
                tally
            })
        })
        .collect()
}

async fn total(tasks: Vec<tokio::task::JoinHandle<Tally>>) -> Tally {
    let mut sum = Tally::default();
    for task in tasks {
        let tally = task.await.unwrap();
        sum.ok += tally.ok;
        sum.refused += tally.refused;
        sum.failed.extend(tally.failed);
    }
    sum
}

async fn served_products(instance: &str) -> f64 {
    let metrics = reqwest::get(format!("{instance}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("dockyard_http_requests_total") && l.contains("route=\"/products")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A new customer places an order of `quantity` of the first product through the gateway,
/// with the client's `traceparent` if given; returns the customer's token, the product and
/// the order's id.
async fn place_order(
    platform: &stack::Stack,
    quantity: u32,
    traceparent: Option<&str>,
) -> (String, String, String) {
    let gateway = &platform.gateway_url;
    let customer = uuid::Uuid::now_v7();
    let token = platform.token(&customer.to_string(), &[]).unwrap();
    let client = reqwest::Client::new();
    let page: Value = get_json(format!("{gateway}/api/catalog/products?limit=1")).await;
    let product = page["items"][0]["id"].as_str().unwrap().to_owned();
    let mut request = client
        .post(format!("{gateway}/api/orders/orders"))
        .bearer_auth(&token)
        .header("idempotency-key", uuid::Uuid::new_v4().to_string());
    if let Some(traceparent) = traceparent {
        request = request.header("traceparent", traceparent);
    }
    let placed = request
        .json(&json!({"customer_id": customer, "lines": [{"product_id": product, "quantity": quantity}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(placed.status(), 202);
    let order = placed.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    (token, product, order)
}

/// gateway → order → catalog, and the saga confirms the order; returns the product.
async fn order_is_confirmed(platform: &stack::Stack) -> String {
    let (token, product, order) = place_order(platform, 2, None).await;
    let client = reqwest::Client::new();
    let order_url = format!("{}/api/orders/orders/{order}", platform.gateway_url);
    let mut status = Value::Null;
    for _ in 0..150 {
        let seen: Value = client
            .get(&order_url)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        status = seen["status"].clone();
        if status == "confirmed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, "confirmed", "the saga confirms the order");

    product
}

/// Scale out: an added catalog instance receives traffic once discovered and checked.
async fn added_instance_takes_traffic(platform: &mut stack::Stack, product: &str) {
    let (client, gateway) = (reqwest::Client::new(), platform.gateway_url.clone());
    let added = platform.add_catalog().await.unwrap();
    let added_url = platform.url_of(&added).unwrap();
    let before = served_products(&added_url).await;
    let mut served = before;
    for _ in 0..100 {
        for _ in 0..10 {
            let response = client
                .get(format!("{gateway}/api/catalog/products/{product}"))
                .send()
                .await
                .unwrap();
            assert!(response.status().is_success());
        }
        served = served_products(&added_url).await;
        if served > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served > before, "{added} never received a request");
}

#[tokio::test]
async fn the_platform_serves_survives_a_crash_scales_out_and_drains_on_sigterm() {
    let (mut platform, _sandbox) = platform(2).await;
    let gateway = platform.gateway_url.clone();
    let product = order_is_confirmed(&platform).await;

    // Kill one catalog instance under load: no GET fails.
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(&gateway, &product, 8, false, &stop);
    tokio::time::sleep(Duration::from_millis(800)).await;
    platform.kill("catalog-1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let crash = total(tasks).await;
    assert!(crash.ok > 50, "{crash:?}");
    assert!(crash.failed.is_empty() && crash.refused == 0, "{crash:?}");

    added_instance_takes_traffic(&mut platform, &product).await;

    // SIGTERM the whole stack under load: requests in flight finish, every process exits 0.
    // The clients act as a load balancer would: they stop sending once the gateway's
    // readiness turns 503 (it does so 300 ms before it closes its listener).
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(&gateway, &product, 8, true, &stop);
    let balancer = tokio::spawn({
        let (stop, ready) = (Arc::clone(&stop), format!("{gateway}/health/ready"));
        async move {
            while reqwest::get(&ready)
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            stop.store(true, Ordering::Relaxed);
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let statuses = platform.stop().await;
    stop.store(true, Ordering::Relaxed);
    balancer.await.unwrap();
    let drain = total(tasks).await;
    assert!(drain.ok > 20, "{drain:?}");
    assert!(
        drain.failed.is_empty(),
        "no request in flight failed: {drain:?}"
    );
    for (name, status) in &statuses {
        if name != "catalog-1" {
            assert!(status.success(), "{name} exited with {status}");
        }
    }
}

/// `clients` loops placing orders through the gateway, each under a fresh `Idempotency-Key`,
/// retried with the same key for up to 2 s as a careful client would; an order still not
/// accepted after 2 s is a failed order.
fn place_orders(
    platform: &stack::Stack,
    product: &str,
    clients: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Tally>> {
    (0..clients)
        .map(|_| {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            let (url, stop) = (
                format!("{}/api/orders/orders", platform.gateway_url),
                Arc::clone(stop),
            );
            let customer = uuid::Uuid::now_v7();
            let token = platform.token(&customer.to_string(), &[]).unwrap();
            let body =
                json!({"customer_id": customer, "lines": [{"product_id": product, "quantity": 1}]});
            tokio::spawn(async move {
                let mut tally = Tally::default();
                while !stop.load(Ordering::Relaxed) {
                    let key = uuid::Uuid::new_v4().to_string();
                    let first = tokio::time::Instant::now();
                    loop {
                        let sent = client
                            .post(&url)
                            .bearer_auth(&token)
                            .header("idempotency-key", &key)
                            .json(&body)
                            .send()
                            .await;
                        let outcome = match sent {
                            Ok(response) if response.status() == 202 => None,
                            Ok(response) => Some(response.status().to_string()),
                            Err(error) => Some(error.to_string()),
                        };
                        match outcome {
                            None => {
                                tally.ok += 1;
                                break;
                            }
                            Some(failure) if first.elapsed() > Duration::from_secs(2) => {
                                tally.failed.push(failure);
                                break;
                            }
                            Some(_) => {
                                tally.refused += 1; // a retried attempt
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    }
                }
                tally
            })
        })
        .collect()
}

#[tokio::test]
async fn restarting_the_only_order_instance_fails_no_order_of_a_client_that_retries() {
    let (mut platform, sandbox) = platform(1).await;
    let product = order_is_confirmed(&platform).await;

    let stop = Arc::new(AtomicBool::new(false));
    let tasks = place_orders(&platform, &product, 4, &stop);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = tokio::time::Instant::now();
    let old = platform.restart("order-1").await.unwrap();
    let gap = started.elapsed();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.store(true, Ordering::Relaxed);
    let orders = total(tasks).await;

    assert!(old.success(), "the old process drained and exited 0: {old}");
    assert!(gap < Duration::from_secs(3), "the restart took {gap:?}");
    assert!(orders.ok > 20, "{orders:?}");
    assert!(
        orders.failed.is_empty(),
        "{} orders failed after 2 s of retries (restart took {gap:?}): {:?}",
        orders.failed.len(),
        &orders.failed[..orders.failed.len().min(5)]
    );
    let url = database::url_of(&sandbox.0.server_url, &sandbox.0.order_database).unwrap();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    assert_eq!(
        usize::try_from(stored).unwrap(),
        orders.ok + 1,
        "one order per accepted key (plus the first one), none doubled"
    );
    platform.stop().await;
}

/// Through the real gateway and services, as `cargo xtask up` runs them: no write without a
/// token, no one else's order, no upstream internals, and no identity a client makes up.
#[tokio::test]
async fn the_edge_lets_no_write_through_without_a_token() {
    let (platform, _sandbox) = platform(1).await;
    let gateway = &platform.gateway_url;
    let client = reqwest::Client::new();
    let products = format!("{gateway}/api/catalog/products");
    let product = json!({"sku": format!("EDGE-{}", uuid::Uuid::new_v4().simple()), "name": "Edge",
        "price": {"amount_minor": 100, "currency": "EUR"}, "stock": 5});
    let (alice, bob) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let token =
        |sub: &uuid::Uuid, scopes: &[&str]| platform.token(&sub.to_string(), scopes).unwrap();

    // Catalog writes: 401 without a token (also with identity headers made up by the
    // client), 403 without the scope, 201 with it.
    let forged = client
        .post(&products)
        .header("x-identity-subject", "admin")
        .header("x-identity-scopes", "catalog:write")
        .json(&product)
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    let customer = client
        .post(&products)
        .bearer_auth(token(&alice, &[]))
        .json(&product);
    assert_eq!(customer.send().await.unwrap().status(), 403);
    let editor = client
        .post(&products)
        .bearer_auth(token(&bob, &["catalog:write"]))
        .json(&product)
        .send()
        .await
        .unwrap();
    assert_eq!(editor.status(), 201);
    let id = editor.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let product_url = format!("{products}/{id}");
    let anonymous_patch = client
        .patch(&product_url)
        .header("if-match", "*")
        .json(&json!({"stock": 0}));
    assert_eq!(anonymous_patch.send().await.unwrap().status(), 401);
    assert_eq!(
        client.delete(&product_url).send().await.unwrap().status(),
        401
    );
    assert_eq!(client.get(&product_url).send().await.unwrap().status(), 200);

    // Orders: a customer's own only.
    let orders = format!("{gateway}/api/orders/orders");
    let place = |bearer: Option<String>| {
        let request = client
            .post(&orders)
            .header("idempotency-key", uuid::Uuid::new_v4().to_string())
            .json(&json!({"lines": [{"product_id": id, "quantity": 1}]}));
        xtask::dev_keys::with_token(request, bearer.as_deref())
    };
    assert_eq!(place(None).send().await.unwrap().status(), 401);
    let placed = place(Some(token(&alice, &[]))).send().await.unwrap();
    assert_eq!(placed.status(), 202);
    let order: Value = placed.json().await.unwrap();
    assert_eq!(order["customer_id"], alice.to_string());
    let order_url = format!("{orders}/{}", order["id"].as_str().unwrap());
    let as_bob = client.get(&order_url).bearer_auth(token(&bob, &[]));
    assert_eq!(as_bob.send().await.unwrap().status(), 404);
    let as_alice = client.get(&order_url).bearer_auth(token(&alice, &[]));
    assert_eq!(as_alice.send().await.unwrap().status(), 200);

    // The services' internals are not reachable through the public port.
    for path in [
        "/api/catalog/metrics",
        "/api/orders/metrics",
        "/api/catalog/health/ready",
        "/api/orders/openapi.json",
        "/metrics",
    ] {
        let status = client
            .get(format!("{gateway}{path}"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 404, "{path}");
    }
}

/// The spans of trace `trace_id` as the console received them, once `ready` holds for them
/// (exports arrive in batches, half a second apart).
async fn trace_from_console(
    console: &str,
    trace_id: &str,
    ready: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let client = reqwest::Client::new();
    let mut spans = Vec::new();
    for _ in 0..100 {
        let response = client
            .get(format!("{console}/api/traces/{trace_id}"))
            .send()
            .await
            .unwrap();
        if response.status() == 200 {
            let trace: Value = response.json().await.unwrap();
            spans.clone_from(trace["spans"].as_array().unwrap());
            if ready(&spans) {
                return spans;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    spans
}

/// The JSON a GET of `url` answers.
async fn get_json(url: String) -> Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

/// Whether `ancestor` is `span`'s parent, or its parent's, and so on.
fn descends_from(spans: &[Value], span: &Value, ancestor: &str) -> bool {
    let mut current = span;
    for _ in 0..spans.len() {
        let Some(parent) = current["parent_span_id"].as_str() else {
            return false;
        };
        if parent == ancestor {
            return true;
        }
        match spans.iter().find(|s| s["span_id"] == parent) {
            Some(next) => current = next,
            None => return false,
        }
    }
    false
}

/// Each of `spans` logged its "request completed" line with its trace and span ids.
fn request_lines_carry_their_span(log: &std::path::Path, trace_id: &str, spans: &[&Value]) {
    let lines = std::fs::read_to_string(log).unwrap();
    let _ = std::fs::remove_file(log);
    let logged: Vec<Value> = lines
        .lines()
        .filter_map(|line| serde_json::from_str(line.split_once('|')?.1.trim()).ok())
        .filter(|line: &Value| line["trace_id"] == trace_id)
        .collect();
    for span in spans {
        assert!(
            logged
                .iter()
                .any(|line| line["span_id"] == span["span_id"]
                    && line["message"] == "request completed"),
            "no log line of span {} in {logged:#?}",
            span["name"]
        );
    }
}

/// One order's trace, exported over OTLP/HTTP to the console (a real receiver: it decodes the
/// protobuf export requests), runs gateway → order → order.placed → catalog → stock.reserved →
/// order, each hop the child of the one before, across the broker; the JSON log lines of the
/// request carry its trace and span ids.
#[tokio::test]
async fn one_orders_trace_crosses_the_gateway_the_services_and_the_broker() {
    let sandbox = Sandbox::new("e2e");
    let log = std::env::temp_dir().join(format!("{}.log", sandbox.exchange));
    let mut options = sandbox.options(1, stack::bin_dir(false));
    options.console_port = Some(0);
    options.log_file = Some(log.clone());
    let guard = Guard(sandbox);
    let platform = stack::Stack::start(options).await.unwrap();
    let console = platform.console_url.clone().unwrap();
    // The client's own trace: everything below continues it.
    let (trace_id, client_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let traceparent = format!("00-{trace_id}-{client_span}-01");
    let (_, _, order_id) = place_order(&platform, 1, Some(&traceparent)).await;

    let of = |spans: &[Value], service: &str, kind: &str, name: &str| -> Option<Value> {
        spans
            .iter()
            .find(|s| s["service"] == service && s["kind"] == kind && s["name"] == name)
            .cloned()
    };
    let complete = |spans: &[Value]| {
        of(spans, "order", "consumer", "stock.reserved process").is_some()
            && of(spans, "catalog", "consumer", "order.placed process").is_some()
            && of(spans, "order", "server", "POST /orders").is_some()
            && of(spans, "gateway", "server", "POST /api/orders").is_some()
    };
    let spans = trace_from_console(&console, trace_id, complete).await;
    let names: Vec<String> = spans
        .iter()
        .map(|s| format!("{} {} {}", s["service"], s["kind"], s["name"]))
        .collect();
    let find = |service: &str, kind: &str, name: &str| {
        of(&spans, service, kind, name)
            .unwrap_or_else(|| panic!("no {kind} span {name:?} of {service} in {names:#?}"))
    };
    let edge = find("gateway", "server", "POST /api/orders");
    let placing = find("order", "server", "POST /orders");
    let reserving = find("catalog", "consumer", "order.placed process");
    let confirming = find("order", "consumer", "stock.reserved process");
    let id = |span: &Value| span["span_id"].as_str().unwrap().to_owned();
    assert_eq!(
        edge["parent_span_id"], client_span,
        "the gateway continues the client's trace"
    );
    assert_eq!(
        placing["parent_span_id"],
        id(&edge),
        "order's request is the gateway's child"
    );
    assert!(
        descends_from(&spans, &reserving, &id(&placing)),
        "the catalog's handling of order.placed descends from the placing request: {names:#?}"
    );
    assert!(
        descends_from(&spans, &confirming, &id(&reserving)),
        "the order's handling of stock.reserved descends from the catalog's: {names:#?}"
    );
    for span in [&reserving, &confirming] {
        assert_eq!(
            span["attributes"]["messaging.message.conversation_id"],
            order_id
        );
    }
    let listed: Value = get_json(format!("{console}/api/traces?order_id={order_id}")).await;
    assert!(
        listed["traces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["trace_id"] == trace_id),
        "the trace is found by its order id: {listed}"
    );

    // The request's log lines carry the ids of the span they were logged in.
    platform.stop().await;
    request_lines_carry_their_span(&log, trace_id, &[&edge, &placing]);
    drop(guard);
}

/// With `RUST_LOG=warn` (no request is logged) a sampled trace still reaches the receiver from
/// every hop, across the broker: the log's filter does not choose the spans. A trace its
/// client marked unsampled (`traceparent` flags `00`) sends nothing from any service: each one
/// follows the sampled flag it receives, in a request or in a message.
#[tokio::test]
async fn traces_are_exported_at_rust_log_warn_and_an_unsampled_one_sends_nothing() {
    let sandbox = Sandbox::new("e2e");
    let mut options = sandbox.options(1, stack::bin_dir(false));
    options.console_port = Some(0);
    options.service_env = vec![("RUST_LOG", "warn".to_owned())];
    let guard = Guard(sandbox);
    let platform = stack::Stack::start(options).await.unwrap();
    let console = platform.console_url.clone().unwrap();

    let unsampled = "5bf92f3577b34da6a3ce929d0e0e4736";
    place_order(
        &platform,
        1,
        Some(&format!("00-{unsampled}-00f067aa0ba902b7-00")),
    )
    .await;
    let sampled = "6bf92f3577b34da6a3ce929d0e0e4736";
    place_order(
        &platform,
        1,
        Some(&format!("00-{sampled}-00f067aa0ba902b7-01")),
    )
    .await;

    let has = |spans: &[Value], service: &str, name: &str| {
        spans
            .iter()
            .any(|s| s["service"] == service && s["name"] == name)
    };
    let complete = |spans: &[Value]| {
        has(spans, "gateway", "POST /api/orders")
            && has(spans, "order", "POST /orders")
            && has(spans, "catalog", "order.placed process")
            && has(spans, "order", "stock.reserved process")
    };
    let spans = trace_from_console(&console, sampled, complete).await;
    assert!(
        complete(&spans),
        "the sampled trace, from every hop, at RUST_LOG=warn: {spans:#?}"
    );
    // The unsampled order was placed first and went the same way; its spans, had any been
    // made, would have been exported in the same batches. Two more export periods, then none.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let response = reqwest::get(format!("{console}/api/traces/{unsampled}"))
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert!(
        status == 404 || body["spans"].as_array().is_some_and(Vec::is_empty),
        "an unsampled trace sent spans: {status} {body:#}"
    );
    platform.stop().await;
    drop(guard);
}

/// The platform with its RabbitMQ connections through a proxy the test cuts: every service
/// reaches the broker through it.
async fn platform_behind_a_broker_proxy(
    catalog_instances: usize,
) -> (stack::Stack, Guard, dockyard_testkit::TcpProxy) {
    let sandbox = Sandbox::new("outage");
    let (proxy, via_proxy) = dockyard_testkit::TcpProxy::in_front_of(&sandbox.amqp_url).await;
    proxy.restore().await;
    let mut options = sandbox.options(catalog_instances, stack::bin_dir(false));
    options.amqp_url = via_proxy;
    // Four customers from one address: well under the limit.
    options.gateway_env = vec![("RATE_LIMIT_PER_SEC", "1000".to_owned())];
    let platform = stack::Stack::start(options).await.unwrap();
    (platform, Guard(sandbox), proxy)
}

/// Four customers placing about 40 keyed orders a second through the gateway (each retried with
/// its key for 20 s), writing to `ledger`, and a reader from its own address, until `stop`.
fn keyed_load(
    platform: &stack::Stack,
    products: &[String],
    (ledger, reads): (
        &Arc<xtask::ledger::Ledger>,
        &Arc<std::sync::Mutex<xtask::clients::Reads>>,
    ),
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    use xtask::clients;
    let gateway = &platform.gateway_url;
    let mut tasks: Vec<tokio::task::JoinHandle<()>> = (0..4)
        .map(|n| {
            let id = uuid::Uuid::now_v7();
            let customer = clients::Customer {
                gateway: gateway.clone(),
                id,
                token: platform.token(&id.to_string(), &[]),
                products: products.to_vec(),
                first_product: n,
                pace: Duration::from_millis(100),
                patience: Duration::from_secs(20),
                cancel_every: 0,
            };
            tokio::spawn(clients::customer(
                customer,
                Arc::clone(ledger),
                Arc::clone(stop),
            ))
        })
        .collect();
    tasks.push(tokio::spawn(clients::reader(
        gateway.clone(),
        products[0].clone(),
        [127, 0, 0, 6],
        Duration::from_millis(20),
        (Arc::clone(ledger), Arc::clone(reads)),
        Arc::clone(stop),
    )));
    tasks
}

/// Waits up to `within` of `since` for no order to be pending, then judges `ledger` against
/// the sandbox's databases (for up to 10 s more, while the stock follows); the checks.
async fn judged(
    sandbox: &Sandbox,
    ledger: &xtask::ledger::Ledger,
    products: &[String],
    stock: i64,
    (since, within): (tokio::time::Instant, Duration),
    expect: &xtask::ledger::Expectations,
) -> (i64, Vec<xtask::ledger::Check>) {
    let connect = |name: &str| {
        let url = xtask::database::url_of(&sandbox.server_url, name).unwrap();
        async move { sqlx::PgPool::connect(&url).await.unwrap() }
    };
    let orders = connect(&sandbox.order_database).await;
    let catalog = connect(&sandbox.catalog_database).await;
    let mut pending = i64::MAX;
    while since.elapsed() < within {
        pending = sqlx::query_scalar("SELECT count(*) FROM orders WHERE status = 'pending'")
            .fetch_one(&orders)
            .await
            .unwrap();
        if pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let placements = ledger.placements();
    let mut checks = Vec::new();
    for _ in 0..50 {
        let snapshot = xtask::ledger::snapshot(&orders, &catalog, products, stock)
            .await
            .unwrap();
        checks = xtask::ledger::judge(&placements, &snapshot, expect);
        if checks.iter().all(|c| c.holds) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    orders.close().await;
    catalog.close().await;
    (pending, checks)
}

/// How the broker goes away: its connections closed (the services notice at once), or held
/// open with nothing getting through (a partition that drops packets: nothing notices until a
/// time-out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outage {
    Cut,
    Stall,
}

#[tokio::test]
async fn a_broker_outage_refuses_no_order_and_fails_no_read() {
    broker_outage(Outage::Cut).await;
}

#[tokio::test]
async fn a_silent_broker_partition_refuses_no_order_and_fails_no_read() {
    broker_outage(Outage::Stall).await;
}

/// 20 s of `outage` under ~40 keyed orders a second and a reader, through the gateway: no
/// placement refused or failed, no read failed, every order confirmed within 10 s of the
/// broker's return, nothing lost or doubled (the ledger's checks).
async fn broker_outage(outage: Outage) {
    use xtask::{clients, ledger};
    let (platform, guard, proxy) = platform_behind_a_broker_proxy(2).await;
    let gateway = platform.gateway_url.clone();
    let editor = platform.token("outage-editor", &["catalog:write"]);
    let stock = 1_000_000;
    let products = xtask::products::create(
        &format!("{gateway}/api/catalog/products"),
        "Outage",
        4,
        100,
        stock,
        editor.as_deref(),
    )
    .await
    .unwrap();
    let ledger = Arc::new(ledger::Ledger::default());
    let reads = Arc::new(std::sync::Mutex::new(clients::Reads::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = keyed_load(&platform, &products, (&ledger, &reads), &stop);
    tokio::time::sleep(Duration::from_secs(2)).await;

    match outage {
        Outage::Cut => proxy.cut(),
        Outage::Stall => proxy.stall(),
    }
    let cut_at = ledger.now();
    tokio::time::sleep(Duration::from_secs(20)).await;
    proxy.restore().await;
    let restored = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("a load task panicked");
    }

    let placed_in_outage = ledger
        .placements()
        .iter()
        .filter(|p| p.attempts.first().is_some_and(|a| a.at >= cut_at))
        .count();
    assert!(
        placed_in_outage >= 400,
        "a steady load throughout the outage: {placed_in_outage} placements in it"
    );
    // Every accepted order ends within 10 s of the broker's return; none refused, failed,
    // lost or doubled.
    let expect = ledger::Expectations {
        min_accepted: placed_in_outage,
        windows: Vec::new(),
    };
    let within = (restored, Duration::from_secs(10));
    let (pending, checks) = judged(&guard.0, &ledger, &products, stock, within, &expect).await;
    assert_eq!(
        pending, 0,
        "orders still pending 10 s after the broker returned"
    );
    assert!(
        ledger::report(&checks),
        "the ledger's checks (printed above)"
    );
    let (total, failed) = {
        let reads = reads.lock().unwrap();
        (reads.total, reads.failed.clone())
    };
    assert!(total > 500, "reads throughout: {total}");
    assert_eq!(failed, Vec::new(), "no read failed");
    platform.stop().await;
}

#[tokio::test]
async fn an_instance_whose_own_database_is_unreachable_leaves_rotation() {
    let (mut platform, guard) = platform(1).await;
    let sandbox = &guard.0;
    let catalog_url =
        xtask::database::url_of(&sandbox.server_url, &sandbox.catalog_database).unwrap();
    let (proxy, via_proxy) = dockyard_testkit::TcpProxy::in_front_of(&catalog_url).await;
    proxy.restore().await;
    let name = platform
        .add_catalog_with(&[("DATABASE_URL", via_proxy)])
        .await
        .unwrap();
    let cut_off = platform.url_of(&name).unwrap();
    let state = |view: Value| {
        view["routes"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r["pools"].as_array().unwrap().iter())
            .flat_map(|p| p["endpoints"].as_array().unwrap().iter())
            .find(|e| e["url"] == cut_off.as_str())
            .map(|e| e["state"].as_str().unwrap().to_owned())
    };
    let upstreams = || async {
        reqwest::Client::new()
            .get(format!("{}/upstreams", platform.admin_url()))
            .bearer_auth("sandbox-admin-token-0123456789")
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    let mut seen = None;
    for _ in 0..100 {
        seen = state(upstreams().await);
        if seen.as_deref() == Some("healthy") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen.as_deref(), Some("healthy"), "in rotation first");

    proxy.cut();

    for _ in 0..100 {
        seen = state(upstreams().await);
        if seen.as_deref() == Some("unhealthy") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen.as_deref(), Some("unhealthy"), "out of rotation");
    let ready: Value = get_json(format!("{cut_off}/health/ready")).await;
    assert_eq!(ready["checks"]["database"]["status"], "down", "{ready}");
    // Reads go to the instance that has its database.
    for _ in 0..20 {
        let read = reqwest::get(format!(
            "{}/api/catalog/products?limit=1",
            platform.gateway_url
        ))
        .await
        .unwrap();
        assert_eq!(read.status(), 200);
    }
    proxy.restore().await;
    platform.stop().await;
}
