//! `/products` and `/products/{id}`, and their OpenAPI description.
//!
//! Every request is parsed here, once, into the domain's types; the schemas below say exactly
//! what parses (ids in their hyphenated spelling, the domain's bounds on every number and
//! string), so a request the document calls valid is never refused as invalid, and the other
//! way round.

use actix_web::{
    HttpRequest, HttpResponse,
    http::header::{self, ETag},
    web,
};
use dockyard_runtime::{
    id::Id,
    identity::Caller,
    number::{Whole, WholeParam},
    openapi::{ProblemSchema, method_not_allowed},
    problem::{FieldError, Problem},
};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::conditional;
use crate::{
    domain::{Currency, NewProduct, ProductChanges},
    store::{Expected, Product, ProductStore},
};

/// Page size when `limit` is not given, and the largest allowed (also for `ids=`).
const DEFAULT_LIMIT: u32 = 20;
const MAX_LIMIT: u32 = 100;
/// The scope a caller needs to change the catalog (see [`Caller::require_scope`]).
pub const WRITE_SCOPE: &str = "catalog:write";

// Patterns are written out where they are used (the OpenAPI attributes take literals only):
// names have no control characters and at least one character that is not white space;
// descriptions have no control characters but line breaks and tabs; `ids` are 1–100
// comma-separated hyphenated UUIDs.

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .service(
            web::resource("/products")
                .route(web::get().to(list))
                .route(web::post().to(create))
                .default_service(web::to(method_not_allowed("GET, POST"))),
        )
        .service(
            web::resource("/products/{id}")
                .route(web::get().to(show))
                .route(web::patch().to(update))
                .route(web::delete().to(remove))
                .default_service(web::to(method_not_allowed("GET, PATCH, DELETE"))),
        );
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Page size, 1–100 (default 20, or the number of `ids`).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    limit: Option<WholeParam<u32>>,
    /// `next_cursor` of the previous page.
    cursor: Option<Id>,
    /// Only these products (1–100 comma-separated ids); unknown ids are skipped.
    #[param(
        pattern = "^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}(,[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}){0,99}$"
    )]
    ids: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
struct Page {
    items: Vec<Product>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    next_cursor: Option<Uuid>,
}

/// Lists products in creation order, a page at a time; `ids` narrows the list to those
/// products.
#[utoipa::path(
    get, path = "/products", tag = "products",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of products", body = Page),
        (status = 400, description = "A malformed query", body = ProblemSchema, content_type = "application/problem+json"),
        (status = 503, description = "The database is unavailable", body = ProblemSchema, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait"))),
    )
)]
#[tracing::instrument(skip(store))]
async fn list(
    store: web::Data<ProductStore>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, Problem> {
    let ListQuery { limit, cursor, ids } = query.into_inner();
    let ids = ids.as_deref().map(parse_ids).transpose()?;
    // A lookup by `ids` answers them all unless `limit` says otherwise.
    let default = ids.as_ref().map_or(DEFAULT_LIMIT, |ids| {
        u32::try_from(ids.len()).unwrap_or(MAX_LIMIT)
    });
    let limit = limit.map_or(default, WholeParam::get);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(Problem::bad_request(format!(
            "`limit` must be between 1 and {MAX_LIMIT}"
        )));
    }
    // One extra row tells whether another page exists.
    let mut items = store
        .page(ids, cursor.map(Id::uuid), i64::from(limit) + 1)
        .await?;
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
        .map(|id| {
            id.parse::<Id>()
                .map(Id::uuid)
                .map_err(|reason| Problem::bad_request(format!("`ids`: {reason}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if ids.len() > MAX_LIMIT as usize {
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

/// One product, with its ETag; `304` when `If-None-Match` names it.
#[utoipa::path(
    get, path = "/products/{id}", tag = "products",
    params(
        ("id" = Id, Path, description = "The product's id"),
        ("If-None-Match" = Option<String>, Header, nullable = false, description = "An ETag from an earlier GET: `304` if it is still current"),
    ),
    responses(
        (status = 200, description = "The product", body = Product,
            headers(("ETag" = String, description = "`\"v<version>\"`"))),
        (status = 304, description = "Not modified since the ETag in `If-None-Match`",
            headers(("ETag" = String))),
        (status = 400, description = "A malformed id", body = ProblemSchema, content_type = "application/problem+json"),
        (status = 404, description = "No such product", body = ProblemSchema, content_type = "application/problem+json"),
        (status = 503, description = "The database is unavailable", body = ProblemSchema, content_type = "application/problem+json",
            headers(("Retry-After" = u32))),
    )
)]
#[tracing::instrument(skip(store, request))]
async fn show(
    store: web::Data<ProductStore>,
    id: web::Path<Id>,
    request: HttpRequest,
) -> Result<HttpResponse, Problem> {
    let product = store.get(id.into_inner().uuid()).await?;
    if conditional::not_modified(&request, product.version) {
        return Ok(HttpResponse::NotModified()
            .insert_header(ETag(conditional::etag(product.version)))
            .finish());
    }
    Ok(with_etag(HttpResponse::Ok(), &product))
}

/// A price: an integer amount of the currency's minor unit.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = NewPrice)]
struct PriceBody {
    /// 0 to 10¹² minor units.
    #[schema(value_type = i64, minimum = 0, maximum = 1_000_000_000_000_i64)]
    amount_minor: Whole<i64>,
    /// An ISO 4217 currency with a minor unit.
    #[schema(schema_with = currency_schema)]
    currency: String,
}

fn currency_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(Currency::codes()))
        .build()
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = NewProduct)]
struct CreateBody {
    /// Stock-keeping unit, unique: 1–64 of `A-Z a-z 0-9 . _ -`.
    #[schema(pattern = r"^[A-Za-z0-9._-]{1,64}$")]
    sku: String,
    /// At most 200 characters, not blank, no control characters; stored trimmed.
    #[schema(
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    name: String,
    /// At most 2000 characters; line breaks and tabs but no other control characters.
    #[serde(default)]
    #[schema(
        max_length = 2000,
        pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$"
    )]
    description: String,
    price: PriceBody,
    /// Units in stock: 0 to 10⁹.
    #[schema(value_type = i64, minimum = 0, maximum = 1_000_000_000)]
    stock: Whole<i64>,
}

/// Creates a product.
#[utoipa::path(
    post, path = "/products", tag = "products",
    request_body(content = CreateBody, content_type = "application/json"),
    responses(
        (status = 201, description = "Created", body = Product,
            headers(("Location" = String, description = "`/products/{id}`"), ("ETag" = String))),
        (status = 400, description = "Malformed JSON", body = ProblemSchema, content_type = "application/problem+json"),
        (status = 401, description = "No caller (`REQUIRE_IDENTITY` is on and the gateway vouched for none)", body = ProblemSchema, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String))),
        (status = 403, description = "The caller lacks the scope `catalog:write`", body = ProblemSchema, content_type = "application/problem+json"),
        (status = 409, description = "The SKU is taken", body = ProblemSchema, content_type = "application/problem+json"),
        (status = 413, description = "The body is over 64 KiB", body = ProblemSchema, content_type = "application/problem+json"),
        (status = 415, description = "Not `application/json`", body = ProblemSchema, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, each named in `errors`", body = ProblemSchema, content_type = "application/problem+json"),
        (status = 503, description = "The database is unavailable", body = ProblemSchema, content_type = "application/problem+json",
            headers(("Retry-After" = u32))),
    )
)]
#[tracing::instrument(skip_all, fields(sku = %body.sku))]
async fn create(
    store: web::Data<ProductStore>,
    caller: Caller,
    body: web::Json<CreateBody>,
) -> Result<HttpResponse, Problem> {
    caller.require_scope(WRITE_SCOPE)?;
    let product = NewProduct::parse(
        &body.sku,
        &body.name,
        &body.description,
        (body.price.amount_minor.get(), &body.price.currency),
        body.stock.get(),
    )
    .map_err(|errors| Problem::validation(&errors))?;
    let product = store.insert(&product).await?;
    tracing::info!(product_id = %product.id, "product created");
    let mut response = HttpResponse::Created();
    response.insert_header((header::LOCATION, format!("/products/{}", product.id)));
    Ok(with_etag(response, &product))
}

/// A member that may be left out but, when present, is not `null`.
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// The members to change (at least one); the others stay as they are. The SKU never changes.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ProductChanges)]
struct PatchBody {
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = String, max_length = 200, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$")]
    name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = String, max_length = 2000, pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$")]
    description: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = PriceBody)]
    price: Option<PriceBody>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = i64, minimum = 0, maximum = 1_000_000_000)]
    stock: Option<Whole<i64>>,
}

/// Changes a product, if it is still at the version its `If-Match` ETag names.
#[utoipa::path(
    patch, path = "/products/{id}", tag = "products",
    params(
        ("id" = Id, Path, description = "The product's id"),
        ("If-Match" = String, Header, example = "\"v1\"",
            description = "The ETag the change is based on (`*`: any version); a value naming no current ETag is `412`"),
    ),
    request_body(content = PatchBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Changed", body = Product, headers(("ETag" = String))),
        (status = 400, description = "Malformed id or JSON", body = ProblemSchema, content_type = "application/problem+json"),
        (status = 401, description = "No caller (`REQUIRE_IDENTITY` is on and the gateway vouched for none)", body = ProblemSchema, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String))),
        (status = 403, description = "The caller lacks the scope `catalog:write`", body = ProblemSchema, content_type = "application/problem+json"),
        (status = 404, description = "No such product", body = ProblemSchema, content_type = "application/problem+json"),
        (status = 412, description = "The product changed since that ETag; `current_etag` says what it is now", body = ProblemSchema, content_type = "application/problem+json"),
        (status = 413, description = "The body is over 64 KiB", body = ProblemSchema, content_type = "application/problem+json"),
        (status = 415, description = "Not `application/json`", body = ProblemSchema, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, each named in `errors`", body = ProblemSchema, content_type = "application/problem+json"),
        (status = 428, description = "`If-Match` is missing", body = ProblemSchema, content_type = "application/problem+json"),
        (status = 503, description = "The database is unavailable", body = ProblemSchema, content_type = "application/problem+json",
            headers(("Retry-After" = u32))),
    )
)]
#[tracing::instrument(skip(store, caller, request, body))]
async fn update(
    store: web::Data<ProductStore>,
    id: web::Path<Id>,
    caller: Caller,
    request: HttpRequest,
    body: web::Json<PatchBody>,
) -> Result<HttpResponse, Problem> {
    caller.require_scope(WRITE_SCOPE)?;
    let expected = conditional::expected_versions(&request, true)?;
    let changes = ProductChanges::parse(
        body.name.as_deref(),
        body.description.as_deref(),
        body.price
            .as_ref()
            .map(|p| (p.amount_minor.get(), p.currency.as_str())),
        body.stock.map(Whole::get),
    )
    .map_err(|errors| Problem::validation(&errors))?;
    let product = store
        .update(id.into_inner().uuid(), &expected, &changes)
        .await?;
    tracing::info!(version = product.version, "product updated");
    Ok(with_etag(HttpResponse::Ok(), &product))
}

/// Deletes a product; with `If-Match`, only at that version.
#[utoipa::path(
    delete, path = "/products/{id}", tag = "products",
    params(
        ("id" = Id, Path, description = "The product's id"),
        ("If-Match" = Option<String>, Header, nullable = false, example = "\"v1\"",
            description = "Delete only at this version: `*`, or ETags; a value naming no current ETag is `412`"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Malformed id", body = ProblemSchema, content_type = "application/problem+json"),
        (status = 401, description = "No caller (`REQUIRE_IDENTITY` is on and the gateway vouched for none)", body = ProblemSchema, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String))),
        (status = 403, description = "The caller lacks the scope `catalog:write`", body = ProblemSchema, content_type = "application/problem+json"),
        (status = 404, description = "No such product", body = ProblemSchema, content_type = "application/problem+json"),
        (status = 412, description = "The product changed since that ETag", body = ProblemSchema, content_type = "application/problem+json"),
        (status = 503, description = "The database is unavailable", body = ProblemSchema, content_type = "application/problem+json",
            headers(("Retry-After" = u32))),
    )
)]
#[tracing::instrument(skip(store, caller, request))]
async fn remove(
    store: web::Data<ProductStore>,
    id: web::Path<Id>,
    caller: Caller,
    request: HttpRequest,
) -> Result<HttpResponse, Problem> {
    caller.require_scope(WRITE_SCOPE)?;
    let expected: Expected = conditional::expected_versions(&request, false)?;
    store.delete(id.into_inner().uuid(), &expected).await?;
    tracing::info!("product deleted");
    Ok(HttpResponse::NoContent().finish())
}

/// The catalog's API.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Dockyard catalog",
        description = "Products, prices and stock. Every error is `application/problem+json` (RFC 9457).",
        version = "1.0.0",
        license(name = "MIT OR Apache-2.0"),
    ),
    paths(list, show, create, update, remove),
    components(schemas(FieldError, Id)),
    tags((name = "products", description = "The product catalog")),
    modifiers(&AtLeastOneChange),
)]
#[derive(Debug)]
pub struct ApiDoc;

/// `ProductChanges` needs at least one member. utoipa-gen 5.5 writes its `min_properties`
/// attribute as `maxProperties` (a bug schemathesis found here), so this sets it directly.
#[derive(Debug)]
struct AtLeastOneChange;

impl utoipa::Modify for AtLeastOneChange {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{RefOr, schema::Schema};
        let changes = openapi
            .components
            .as_mut()
            .and_then(|components| components.schemas.get_mut("ProductChanges"));
        if let Some(RefOr::T(Schema::Object(object))) = changes {
            object.max_properties = None;
            object.min_properties = Some(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_strict_and_bounded() {
        let id = Uuid::now_v7();
        assert_eq!(parse_ids(&format!("{id},{id}")).unwrap(), [id, id]);
        assert!(parse_ids(&format!("{id}, {id}")).is_err(), "no spaces");
        assert!(parse_ids(&format!("{id},")).is_err(), "no empty ids");
        assert!(
            parse_ids(&id.simple().to_string()).is_err(),
            "hyphenated only"
        );
        let many = vec![id.to_string(); 101].join(",");
        assert!(parse_ids(&many).is_err());
    }
}
