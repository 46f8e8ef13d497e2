//! `catalog seed`: a small demo catalog. Idempotent: products are keyed by SKU and existing
//! ones are left untouched, so running it twice changes nothing.

use anyhow::Context;
use dockyard_runtime::database::{self, Database, DatabaseConfig};

use crate::{domain::NewProduct, store::ProductStore};

/// (sku, name, description, price in minor units, currency, stock)
const DEMO_PRODUCTS: &[(&str, &str, &str, i64, &str, i64)] = &[
    (
        "DOCK-MUG",
        "Dockyard mug",
        "Stoneware, 350 ml.",
        1290,
        "EUR",
        120,
    ),
    (
        "DOCK-TEE",
        "Dockyard T-shirt",
        "Organic cotton, navy.",
        2490,
        "EUR",
        80,
    ),
    ("DOCK-CAP", "Dockyard cap", "One size.", 1990, "EUR", 60),
    (
        "DOCK-STICKERS",
        "Sticker pack",
        "Ten vinyl stickers.",
        490,
        "EUR",
        500,
    ),
    (
        "DOCK-HOODIE",
        "Dockyard hoodie",
        "Heavyweight, grey.",
        5490,
        "EUR",
        25,
    ),
    (
        "DOCK-POSTER",
        "Container ship poster",
        "A2, matte.",
        1590,
        "EUR",
        0,
    ),
];

pub async fn run(config: &DatabaseConfig) -> anyhow::Result<()> {
    let pool = database::connect(config)
        .await
        .with_context(|| format!("connecting to {}", config.database_url))?;
    let store = ProductStore::new(Database::new(pool.clone()));
    let mut inserted = 0;
    for &(sku, name, description, price, currency, stock) in DEMO_PRODUCTS {
        let product = NewProduct::parse(sku, name, description, (price, currency), stock)
            .map_err(|errors| anyhow::anyhow!("demo product {sku} is invalid: {errors:?}"))?;
        if store.insert_if_absent(&product).await? {
            inserted += 1;
        }
    }
    tracing::info!(
        inserted,
        already_present = DEMO_PRODUCTS.len() - inserted,
        "catalog seeded"
    );
    pool.close().await;
    Ok(())
}
