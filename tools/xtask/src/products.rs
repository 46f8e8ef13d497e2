//! Products for the suites that run a platform of their own (chaos, the benchmarks).

use anyhow::Context;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::dev_keys;

/// Creates `count` products named `{label} product {n}` (unique SKUs `{LABEL}-{n}-…`) at
/// `price_minor` EUR cents with `stock` units each, through `products_url` (a catalog's or the
/// gateway's `…/products`); returns their ids.
pub async fn create(
    products_url: &str,
    label: &str,
    count: usize,
    price_minor: i64,
    stock: i64,
    token: Option<&str>,
) -> anyhow::Result<Vec<String>> {
    let client = reqwest::Client::new();
    let mut ids = Vec::with_capacity(count);
    for n in 0..count {
        let body = json!({
            "sku": format!("{}-{n}-{}", label.to_uppercase(), Uuid::new_v4().simple()),
            "name": format!("{label} product {n}"),
            "price": {"amount_minor": price_minor, "currency": "EUR"},
            "stock": stock,
        });
        let request = dev_keys::with_token(client.post(products_url).json(&body), token);
        let created: Value = request.send().await?.error_for_status()?.json().await?;
        ids.push(created["id"].as_str().context("a product id")?.to_owned());
    }
    Ok(ids)
}
