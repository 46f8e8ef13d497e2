//! `/orders`, `/orders/{id}`, `/orders/{id}/cancel`.

use actix_web::{
    HttpRequest, HttpResponse,
    http::{StatusCode, header},
    web,
};
use dockyard_runtime::problem::{FieldError, Problem};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::{
    catalog::CatalogClient,
    domain::NewOrder,
    store::{Order, OrderStore, Placed, Total},
};

const DEFAULT_LIMIT: u32 = 20;
const MAX_LIMIT: u32 = 100;
const IDEMPOTENCY_KEY: &str = "idempotency-key";

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .service(
            web::resource("/orders")
                .route(web::post().to(place))
                .route(web::get().to(list)),
        )
        .route("/orders/{id}", web::get().to(show))
        .route("/orders/{id}/cancel", web::post().to(cancel));
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LineBody {
    product_id: Uuid,
    quantity: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlaceBody {
    customer_id: Uuid,
    lines: Vec<LineBody>,
}

fn idempotency_key(request: &HttpRequest) -> Result<String, Problem> {
    let key = request
        .headers()
        .get(IDEMPOTENCY_KEY)
        .ok_or_else(|| Problem::bad_request("POST /orders requires an Idempotency-Key header (e.g. a UUID you generate once per order)"))?
        .to_str()
        .ok()
        .filter(|key| !key.is_empty() && key.len() <= 255 && key.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| Problem::bad_request("Idempotency-Key must be 1-255 printable ASCII characters"))?;
    Ok(key.to_owned())
}

fn accepted(order: &Value, status: u16) -> HttpResponse {
    let location = order["id"]
        .as_str()
        .map(|id| format!("/orders/{id}"))
        .unwrap_or_default();
    HttpResponse::build(StatusCode::from_u16(status).unwrap_or(StatusCode::ACCEPTED))
        .insert_header((header::LOCATION, location))
        .json(order)
}

/// Places an order: 202 + `Location`, the order `pending` until the stock saga decides.
#[tracing::instrument(skip_all)]
async fn place(
    store: web::Data<OrderStore>,
    catalog: web::Data<CatalogClient>,
    request: HttpRequest,
    body: web::Json<Value>,
) -> Result<HttpResponse, Problem> {
    let key = idempotency_key(&request)?;
    let raw = body.into_inner();
    if let Some(earlier) = store.recall(&key, &raw).await? {
        return replay(earlier);
    }
    let parsed: PlaceBody = serde_json::from_value(raw.clone())
        .map_err(|e| Problem::validation(&[FieldError::new("body", e.to_string())]))?;
    let lines: Vec<(Uuid, i64)> = parsed
        .lines
        .iter()
        .map(|l| (l.product_id, l.quantity))
        .collect();
    let mut order = NewOrder::parse(parsed.customer_id, &lines)
        .map_err(|errors| Problem::validation(&errors))?;
    let total = price(&catalog, &mut order).await?;
    let placed = store.place(&key, &raw, &order, total).await?;
    if let Placed::Created(order) = &placed {
        tracing::info!(order_id = %order.id, priced = order.total.is_some(), "order placed");
    }
    replay(placed)
}

/// Prices the lines when the catalog answers (unknown products are refused at once); when it
/// does not, leaves them unpriced: the saga prices them (the alternate path).
async fn price(catalog: &CatalogClient, order: &mut NewOrder) -> Result<Option<Total>, Problem> {
    let ids: Vec<Uuid> = order.lines.iter().map(|l| l.product_id).collect();
    let prices = match catalog.prices(&ids).await {
        Ok(prices) => prices,
        Err(unavailable) => {
            tracing::warn!(reason = %unavailable, "catalog unavailable; accepting the order for the saga to price");
            return Ok(None);
        }
    };
    let unknown: Vec<FieldError> = order
        .lines
        .iter()
        .enumerate()
        .filter(|(_, line)| !prices.contains_key(&line.product_id))
        .map(|(i, line)| {
            FieldError::new(
                format!("lines[{i}].product_id"),
                format!("product {} does not exist", line.product_id),
            )
        })
        .collect();
    if !unknown.is_empty() {
        return Err(Problem::validation(&unknown));
    }
    let mut total = Total {
        amount_minor: 0,
        currency: String::new(),
    };
    for line in &mut order.lines {
        let price = &prices[&line.product_id];
        if total.currency.is_empty() {
            total.currency.clone_from(&price.currency);
        } else if total.currency != price.currency {
            return Err(Problem::validation(&[FieldError::new(
                "lines",
                "all products of an order must have the same currency",
            )]));
        }
        line.unit_price_minor = Some(price.amount_minor);
        total.amount_minor = total
            .amount_minor
            .saturating_add(price.amount_minor.saturating_mul(i64::from(line.quantity)));
    }
    Ok(Some(total))
}

fn replay(placed: Placed) -> Result<HttpResponse, Problem> {
    match placed {
        Placed::Created(order) => Ok(accepted(&serde_json::to_value(&order).expect("an order serialises"), 202)),
        Placed::Replayed { status, body } => Ok(accepted(&body, status)),
        Placed::KeyReused => Err(Problem::of_kind(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency-key-reused",
            "Idempotency-Key reused with another request",
        )
        .detail("this Idempotency-Key was already used with a different request body; use a new key for a new order")),
    }
}

async fn show(store: web::Data<OrderStore>, id: web::Path<Uuid>) -> Result<HttpResponse, Problem> {
    Ok(HttpResponse::Ok().json(store.get(id.into_inner()).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    customer_id: Uuid,
    limit: Option<u32>,
    cursor: Option<Uuid>,
}

#[derive(Debug, Serialize)]
struct Page {
    items: Vec<Order>,
    next_cursor: Option<Uuid>,
}

async fn list(
    store: web::Data<OrderStore>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, Problem> {
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(Problem::bad_request(format!(
            "`limit` must be between 1 and {MAX_LIMIT}"
        )));
    }
    let mut items = store
        .of_customer(query.customer_id, query.cursor, i64::from(limit) + 1)
        .await?;
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|order| order.id)
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(Page { items, next_cursor }))
}

async fn cancel(
    store: web::Data<OrderStore>,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, Problem> {
    Ok(HttpResponse::Ok().json(store.cancel(id.into_inner()).await?))
}
