//! `/orders`, `/orders/{id}`, `/orders/{id}/cancel`, and their OpenAPI description (what the
//! schemas call valid is exactly what parses here).

use actix_web::{
    HttpRequest, HttpResponse,
    http::{StatusCode, header},
    web,
};
use dockyard_runtime::{
    id::Id,
    identity::Caller,
    number::{Whole, WholeParam},
    openapi::{ProblemSchema, method_not_allowed},
    problem::{FieldError, Problem},
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::{
    admission::{Admission, RECALL_WITHIN},
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
                .route(web::get().to(list))
                .default_service(web::to(method_not_allowed("GET, POST"))),
        )
        .service(
            web::resource("/orders/{id}")
                .route(web::get().to(show))
                .default_service(web::to(method_not_allowed("GET"))),
        )
        .service(
            web::resource("/orders/{id}/cancel")
                .route(web::post().to(cancel))
                .default_service(web::to(method_not_allowed("POST"))),
        );
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = NewLine)]
struct LineBody {
    product_id: Id,
    /// 1 to 10 000 units.
    #[schema(value_type = i64, minimum = 1, maximum = 10_000)]
    quantity: Whole<i64>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = NewOrder)]
struct PlaceBody {
    /// The customer placing the order. Through the gateway it is the caller's own (the token's
    /// `sub`) and may be left out; another customer's id is `403`.
    customer_id: Option<Id>,
    /// 1 to 100 lines.
    #[schema(min_items = 1, max_items = 100)]
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

/// Places an order: `202` + `Location`, the order `pending` until the stock saga decides. The
/// same `Idempotency-Key` with the same body answers the first response again.
#[utoipa::path(
    post, path = "/orders", tag = "orders",
    params(
        ("Idempotency-Key" = String, Header, pattern = "^[!-~]{1,255}$", example = "9b0e2c1e-4f7d-4f1a-9d6e-2f1c3b5a7d90",
            description = "1–255 printable ASCII characters, new for each order (a UUID you generate)"),
    ),
    request_body(content = PlaceBody, content_type = "application/json"),
    responses(
        (status = 202, description = "Accepted: pending until the stock saga decides", body = Order,
            headers(("Location" = String, description = "`/orders/{id}`"))),
        (status = 400, description = "Malformed JSON, or no usable `Idempotency-Key`", body = ProblemSchema, content_type = "application/problem+json"),
        (status = 401, description = "No caller (`REQUIRE_IDENTITY` is on and the gateway vouched for none)", body = ProblemSchema, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String))),
        (status = 403, description = "The caller is not a customer, or names another customer", body = ProblemSchema, content_type = "application/problem+json"),
        (status = 413, description = "The body is over 64 KiB", body = ProblemSchema, content_type = "application/problem+json"),
        (status = 415, description = "Not `application/json`", body = ProblemSchema, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, a product that does not exist, or the key used before with another body", body = ProblemSchema, content_type = "application/problem+json"),
        (status = 503, description = "Too many orders in progress (`urn:dockyard:problem:overloaded`), or the database is unavailable; retry after `Retry-After` seconds with the same key", body = ProblemSchema, content_type = "application/problem+json",
            headers(("Retry-After" = u32))),
    )
)]
#[tracing::instrument(skip_all)]
async fn place(
    store: web::Data<OrderStore>,
    catalog: web::Data<CatalogClient>,
    admission: web::Data<Admission>,
    caller: Caller,
    request: HttpRequest,
    body: web::Json<Value>,
) -> Result<HttpResponse, Problem> {
    let key = idempotency_key(&request)?;
    let mut raw = body.into_inner();
    own_customer(&caller, &mut raw)?;
    // Refused before anything is written: a retry with the same key starts afresh. A retry of
    // a request let in before (its answer was lost) gets that answer rather than a refusal:
    // the key is looked up only on this path, within a budget of lookups per second and a
    // short wait; a lookup that fails or is slow leaves the refusal as it was.
    if let Err(overloaded) = admission.admit(store.queue_full()) {
        if overloaded.may_recall()
            && let Ok(Ok(Some(earlier))) =
                tokio::time::timeout(RECALL_WITHIN, store.recall(&key, &raw)).await
        {
            return replay(earlier);
        }
        return Err(admission.shed(overloaded));
    }
    // The first time, this is all there is to do; a request repeated with its key finds the
    // key taken in `place` and gets its first answer. Only when the request is refused does
    // the key get looked up first: an order accepted before stays accepted (say its product
    // was deleted since).
    let (order, total) = match validate_and_price(&catalog, &raw).await {
        Ok(priced) => priced,
        Err(problem) => {
            return match store.recall(&key, &raw).await? {
                Some(earlier) => replay(earlier),
                None => Err(problem),
            };
        }
    };
    let placed = store.place(&key, &raw, &order, total).await?;
    if let Placed::Created(order) = &placed {
        tracing::info!(order_id = %order.id, priced = order.total.is_some(), "order placed");
    }
    replay(placed)
}

/// With a caller, the order is theirs: a `customer_id` in the body must be the caller's (else
/// `403`) and is filled in when left out, so the request remembered with its `Idempotency-Key`
/// names the customer — the same key and body from another customer is a different request.
fn own_customer(caller: &Caller, raw: &mut Value) -> Result<(), Problem> {
    let Some(identity) = &caller.0 else {
        return Ok(());
    };
    let customer = identity.customer_id()?;
    let Some(body) = raw.as_object_mut() else {
        return Ok(()); // not an object: refused as invalid content next
    };
    if let Some(named) = body.get("customer_id") {
        let same = named
            .as_str()
            .and_then(|id| Uuid::parse_str(id).ok())
            .is_some_and(|id| id == customer);
        if !same {
            return Err(Problem::forbidden(
                "`customer_id` names another customer; leave it out to order as yourself",
            ));
        }
    }
    body.insert(
        "customer_id".to_owned(),
        Value::String(customer.to_string()),
    );
    Ok(())
}

/// The caller's view of an order: another customer's order does not exist for them.
fn visible(caller: &Caller, order: Order) -> Result<Order, Problem> {
    match &caller.0 {
        Some(identity) if identity.customer_id()? != order.customer_id => {
            Err(Problem::not_found(format!("order {} not found", order.id)))
        }
        _ => Ok(order),
    }
}

/// The order the body asks for, priced.
async fn validate_and_price(
    catalog: &CatalogClient,
    raw: &Value,
) -> Result<(NewOrder, Option<Total>), Problem> {
    let parsed: PlaceBody = serde_json::from_value(raw.clone())
        .map_err(|e| Problem::validation(&[FieldError::new("body", e.to_string())]))?;
    let lines: Vec<(Uuid, i64)> = parsed
        .lines
        .iter()
        .map(|l| (l.product_id.uuid(), l.quantity.get()))
        .collect();
    let customer_id = parsed.customer_id.ok_or_else(|| {
        Problem::validation(&[FieldError::new(
            "customer_id",
            "is required (or place the order through the gateway with a customer's token)",
        )])
    })?;
    let mut order = NewOrder::parse(customer_id.uuid(), &lines)
        .map_err(|errors| Problem::validation(&errors))?;
    let total = price(catalog, &mut order).await?;
    Ok((order, total))
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

/// One order.
#[utoipa::path(
    get, path = "/orders/{id}", tag = "orders",
    params(("id" = Id, Path, description = "The order's id")),
    responses(
        (status = 200, description = "The order", body = Order),
        (status = 400, description = "A malformed id", body = ProblemSchema, content_type = "application/problem+json"),
        (status = 401, description = "No caller (`REQUIRE_IDENTITY` is on and the gateway vouched for none)", body = ProblemSchema, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String))),
        (status = 403, description = "The caller is not a customer", body = ProblemSchema, content_type = "application/problem+json"),
        (status = 404, description = "No such order", body = ProblemSchema, content_type = "application/problem+json"),
        (status = 503, description = "The database is unavailable", body = ProblemSchema, content_type = "application/problem+json",
            headers(("Retry-After" = u32))),
    )
)]
async fn show(
    store: web::Data<OrderStore>,
    caller: Caller,
    id: web::Path<Id>,
) -> Result<HttpResponse, Problem> {
    let order = visible(&caller, store.get(id.into_inner().uuid()).await?)?;
    Ok(HttpResponse::Ok().json(order))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Whose orders; through the gateway the caller's own (may be left out).
    customer_id: Option<Id>,
    /// Page size, 1–100 (default 20).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    limit: Option<WholeParam<u32>>,
    /// `next_cursor` of the previous page.
    cursor: Option<Id>,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = OrderPage)]
struct Page {
    items: Vec<Order>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    next_cursor: Option<Uuid>,
}

/// A customer's orders, oldest first, a page at a time.
#[utoipa::path(
    get, path = "/orders", tag = "orders",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of orders", body = Page),
        (status = 400, description = "A malformed query, or no `customer_id` without a caller", body = ProblemSchema, content_type = "application/problem+json"),
        (status = 401, description = "No caller (`REQUIRE_IDENTITY` is on and the gateway vouched for none)", body = ProblemSchema, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String))),
        (status = 403, description = "The caller is not a customer, or names another customer", body = ProblemSchema, content_type = "application/problem+json"),
        (status = 503, description = "The database is unavailable", body = ProblemSchema, content_type = "application/problem+json",
            headers(("Retry-After" = u32))),
    )
)]
async fn list(
    store: web::Data<OrderStore>,
    caller: Caller,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, Problem> {
    let named = query.customer_id.map(Id::uuid);
    let customer_id = match &caller.0 {
        Some(identity) => {
            let own = identity.customer_id()?;
            if named.is_some_and(|named| named != own) {
                return Err(Problem::forbidden(
                    "`customer_id` names another customer; leave it out to list your own orders",
                ));
            }
            own
        }
        None => named.ok_or_else(|| Problem::bad_request("`customer_id` is required"))?,
    };
    let limit = query.limit.map_or(DEFAULT_LIMIT, WholeParam::get);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(Problem::bad_request(format!(
            "`limit` must be between 1 and {MAX_LIMIT}"
        )));
    }
    let mut items = store
        .of_customer(
            customer_id,
            query.cursor.map(Id::uuid),
            i64::from(limit) + 1,
        )
        .await?;
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|order| order.id)
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(Page { items, next_cursor }))
}

/// Cancels a pending or confirmed order; the catalog releases its stock.
#[utoipa::path(
    post, path = "/orders/{id}/cancel", tag = "orders",
    params(("id" = Id, Path, description = "The order's id")),
    responses(
        (status = 200, description = "The cancelled order", body = Order),
        (status = 400, description = "A malformed id", body = ProblemSchema, content_type = "application/problem+json"),
        (status = 401, description = "No caller (`REQUIRE_IDENTITY` is on and the gateway vouched for none)", body = ProblemSchema, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String))),
        (status = 403, description = "The caller is not a customer", body = ProblemSchema, content_type = "application/problem+json"),
        (status = 404, description = "No such order", body = ProblemSchema, content_type = "application/problem+json"),
        (status = 409, description = "The order is rejected or cancelled already", body = ProblemSchema, content_type = "application/problem+json"),
        (status = 503, description = "The database is unavailable", body = ProblemSchema, content_type = "application/problem+json",
            headers(("Retry-After" = u32))),
    )
)]
async fn cancel(
    store: web::Data<OrderStore>,
    caller: Caller,
    id: web::Path<Id>,
) -> Result<HttpResponse, Problem> {
    let id = id.into_inner().uuid();
    if caller.0.is_some() {
        visible(&caller, store.get(id).await?)?;
    }
    Ok(HttpResponse::Ok().json(store.cancel(id).await?))
}

/// The order service's API.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(
    info(
        title = "Dockyard orders",
        description = "Orders placed with an `Idempotency-Key`, confirmed or rejected by the stock saga. Every error is `application/problem+json` (RFC 9457).",
        version = "1.0.0",
        license(name = "MIT OR Apache-2.0"),
    ),
    paths(place, list, show, cancel),
    components(schemas(FieldError, Id)),
    tags((name = "orders", description = "Orders and their saga")),
)]
pub struct ApiDoc;
