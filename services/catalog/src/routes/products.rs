//! `/products` and `/products/{id}`.

use actix_web::{
    HttpRequest, HttpResponse,
    http::header::{self, ETag},
    web,
};
use dockyard_runtime::problem::Problem;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::conditional;
use crate::{
    domain::{NewProduct, ProductChanges},
    store::{Expected, Product, ProductStore},
};

/// Page size when `limit` is not given, and the largest allowed (also for `ids=`).
const DEFAULT_LIMIT: u32 = 20;
const MAX_LIMIT: u32 = 100;

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .service(
            web::resource("/products")
                .route(web::get().to(list))
                .route(web::post().to(create)),
        )
        .service(
            web::resource("/products/{id}")
                .route(web::get().to(show))
                .route(web::patch().to(update))
                .route(web::delete().to(remove)),
        );
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<u32>,
    /// Opaque position returned as `next_cursor` by the previous page.
    cursor: Option<Uuid>,
    /// Comma-separated product ids: batch lookup instead of paging.
    ids: Option<String>,
}

#[derive(Debug, Serialize)]
struct Page {
    items: Vec<Product>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    next_cursor: Option<Uuid>,
}

#[tracing::instrument(skip(store))]
async fn list(
    store: web::Data<ProductStore>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, Problem> {
    let ListQuery { limit, cursor, ids } = query.into_inner();
    if let Some(ids) = ids {
        if cursor.is_some() || limit.is_some() {
            return Err(Problem::bad_request(
                "`ids` cannot be combined with `cursor` or `limit`",
            ));
        }
        let ids = parse_ids(&ids)?;
        let items = store.get_many(&ids).await?;
        return Ok(HttpResponse::Ok().json(Page {
            items,
            next_cursor: None,
        }));
    }
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(Problem::bad_request(format!(
            "`limit` must be between 1 and {MAX_LIMIT}"
        )));
    }
    // One extra row tells whether another page exists.
    let mut items = store.page(cursor, i64::from(limit) + 1).await?;
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|product| product.id)
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(Page { items, next_cursor }))
}

fn parse_ids(raw: &str) -> Result<Vec<Uuid>, Problem> {
    let ids = raw
        .split(',')
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map(|id| {
            Uuid::parse_str(id).map_err(|_| {
                Problem::bad_request(format!("`ids` contains `{id}`, which is not a UUID"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if ids.is_empty() || ids.len() > MAX_LIMIT as usize {
        return Err(Problem::bad_request(format!(
            "`ids` must list between 1 and {MAX_LIMIT} product ids"
        )));
    }
    Ok(ids)
}

fn with_etag(mut response: actix_web::HttpResponseBuilder, product: &Product) -> HttpResponse {
    response
        .insert_header(ETag(conditional::etag(product.version)))
        .json(product)
}

#[tracing::instrument(skip(store, request))]
async fn show(
    store: web::Data<ProductStore>,
    id: web::Path<Uuid>,
    request: HttpRequest,
) -> Result<HttpResponse, Problem> {
    let product = store.get(id.into_inner()).await?;
    if conditional::not_modified(&request, product.version) {
        return Ok(HttpResponse::NotModified()
            .insert_header(ETag(conditional::etag(product.version)))
            .finish());
    }
    Ok(with_etag(HttpResponse::Ok(), &product))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceBody {
    amount_minor: i64,
    currency: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    sku: String,
    name: String,
    #[serde(default)]
    description: String,
    price: PriceBody,
    stock: i64,
}

#[tracing::instrument(skip_all, fields(sku = %body.sku))]
async fn create(
    store: web::Data<ProductStore>,
    body: web::Json<CreateBody>,
) -> Result<HttpResponse, Problem> {
    let product = NewProduct::parse(
        &body.sku,
        &body.name,
        &body.description,
        (body.price.amount_minor, &body.price.currency),
        body.stock,
    )
    .map_err(|errors| Problem::validation(&errors))?;
    let product = store.insert(&product).await?;
    tracing::info!(product_id = %product.id, "product created");
    let mut response = HttpResponse::Created();
    response.insert_header((header::LOCATION, format!("/products/{}", product.id)));
    Ok(with_etag(response, &product))
}

/// A partial update (JSON merge-patch style): absent or `null` members stay unchanged.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchBody {
    name: Option<String>,
    description: Option<String>,
    price: Option<PriceBody>,
    stock: Option<i64>,
}

#[tracing::instrument(skip(store, request, body))]
async fn update(
    store: web::Data<ProductStore>,
    id: web::Path<Uuid>,
    request: HttpRequest,
    body: web::Json<PatchBody>,
) -> Result<HttpResponse, Problem> {
    let expected = conditional::expected_versions(&request, true)?;
    let changes = ProductChanges::parse(
        body.name.as_deref(),
        body.description.as_deref(),
        body.price
            .as_ref()
            .map(|p| (p.amount_minor, p.currency.as_str())),
        body.stock,
    )
    .map_err(|errors| Problem::validation(&errors))?;
    let product = store.update(id.into_inner(), &expected, &changes).await?;
    tracing::info!(version = product.version, "product updated");
    Ok(with_etag(HttpResponse::Ok(), &product))
}

#[tracing::instrument(skip(store, request))]
async fn remove(
    store: web::Data<ProductStore>,
    id: web::Path<Uuid>,
    request: HttpRequest,
) -> Result<HttpResponse, Problem> {
    let expected: Expected = conditional::expected_versions(&request, false)?;
    store.delete(id.into_inner(), &expected).await?;
    tracing::info!("product deleted");
    Ok(HttpResponse::NoContent().finish())
}
