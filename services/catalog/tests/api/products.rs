use std::collections::HashSet;

use serde_json::{Value, json};

use crate::helpers::{assert_problem, etag_of, product_body, spawn_app};

#[tokio::test]
async fn create_answers_201_with_location_and_etag_and_the_product_can_be_read_back() {
    let app = spawn_app().await;

    let response = app.post_product(&product_body("MUG-1")).await;

    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let etag = etag_of(&response);
    let created: Value = response.json().await.unwrap();
    assert_eq!(
        location,
        format!("/products/{}", created["id"].as_str().unwrap())
    );
    assert_eq!(etag, "\"v1\"");
    assert_eq!(created["sku"], "MUG-1");
    assert_eq!(
        created["price"],
        json!({"amount_minor": 1299, "currency": "EUR"})
    );
    assert_eq!(created["stock"], 10);
    assert_eq!(created["version"], 1);

    let read = app.get(&location).await;
    assert_eq!(read.status(), 200);
    assert_eq!(etag_of(&read), etag);
    assert_eq!(read.json::<Value>().await.unwrap(), created);
}

#[tokio::test]
async fn if_none_match_with_the_current_etag_answers_304() {
    let app = spawn_app().await;
    let (product, etag) = app.create_product("MUG-1").await;
    let path = format!("/products/{}", product["id"].as_str().unwrap());

    let cached = app
        .client
        .get(app.url(&path))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    let stale = app
        .client
        .get(app.url(&path))
        .header("if-none-match", "\"v0\"")
        .send()
        .await
        .unwrap();

    assert_eq!(cached.status(), 304);
    assert_eq!(etag_of(&cached), etag);
    assert!(cached.bytes().await.unwrap().is_empty());
    assert_eq!(stale.status(), 200);
}

#[tokio::test]
async fn listing_pages_through_every_product_once_with_a_cursor() {
    let app = spawn_app().await;
    let mut created = HashSet::new();
    for i in 0..5 {
        let (product, _) = app.create_product(&format!("SKU-{i}")).await;
        created.insert(product["id"].as_str().unwrap().to_owned());
    }

    let mut seen = Vec::new();
    let mut page_sizes = Vec::new();
    let mut path = "/products?limit=2".to_owned();
    loop {
        let page: Value = app.get(&path).await.json().await.unwrap();
        let items = page["items"].as_array().unwrap();
        page_sizes.push(items.len());
        seen.extend(items.iter().map(|p| p["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/products?limit=2&cursor={cursor}"),
            None => break,
        }
    }

    assert_eq!(page_sizes, [2, 2, 1]);
    assert_eq!(seen.len(), 5, "no product twice");
    assert_eq!(seen.into_iter().collect::<HashSet<_>>(), created);
}

#[tokio::test]
async fn ids_looks_up_a_batch_and_skips_unknown_ids() {
    let app = spawn_app().await;
    let mut many = Vec::new();
    for n in 0..25 {
        many.push(
            app.create_product(&format!("MANY-{n}")).await.0["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let all: Value = app
        .get(&format!("/products?ids={}", many.join(",")))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        all["items"].as_array().unwrap().len(),
        25,
        "every id, not a page of 20"
    );
    let (a, _) = app.create_product("A").await;
    app.create_product("B").await;
    let (c, _) = app.create_product("C").await;
    let unknown = uuid::Uuid::now_v7();

    let page: Value = app
        .get(&format!(
            "/products?ids={},{unknown},{}",
            a["id"].as_str().unwrap(),
            c["id"].as_str().unwrap()
        ))
        .await
        .json()
        .await
        .unwrap();

    let skus: Vec<_> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["sku"].clone())
        .collect();
    assert_eq!(skus, [json!("A"), json!("C")]);
    assert_eq!(page["next_cursor"], Value::Null);

    let first: Value = app
        .get(&format!(
            "/products?ids={},{}&limit=1.0",
            c["id"].as_str().unwrap(),
            a["id"].as_str().unwrap()
        ))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(first["items"][0]["sku"], "A", "pages in id order");
    assert_eq!(first["next_cursor"], a["id"], "and pages on");
}

#[tokio::test]
async fn malformed_list_queries_are_400_problems() {
    let app = spawn_app().await;
    for path in [
        "/products?limit=0",
        "/products?limit=101",
        "/products?limit=ten",
        "/products?cursor=nope",
        "/products?ids=1,2",
        "/products?ids=",
        "/products?ids=018f0000-0000-7000-8000-000000000000,",
        "/products?ids=018f0000000070008000000000000000",
        "/products?cursor=018f0000000070008000000000000000",
        "/products?limit=2.5",
        "/products?colour=red",
    ] {
        let problem = assert_problem(app.get(path).await, 400).await;
        assert!(problem["detail"].is_string(), "{path}: {problem}");
    }
}

#[tokio::test]
async fn invalid_products_are_422_naming_each_field() {
    let app = spawn_app().await;
    let cases = [
        (json!({"name": "  "}), "name"),
        (
            json!({"price": {"amount_minor": -1, "currency": "EUR"}}),
            "price.amount_minor",
        ),
        (
            json!({"price": {"amount_minor": 100, "currency": "EURO"}}),
            "price.currency",
        ),
        (json!({"stock": -3}), "stock"),
        (json!({"sku": "has spaces"}), "sku"),
    ];
    for (change, field) in cases {
        let mut body = product_body("OK-1");
        for (key, value) in change.as_object().unwrap() {
            body[key] = value.clone();
        }

        let problem = assert_problem(app.post_product(&body).await, 422).await;

        let fields: Vec<_> = problem["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].clone())
            .collect();
        assert_eq!(fields, [json!(field)], "{problem}");
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM products")
        .fetch_one(&app.db.pool().await)
        .await
        .unwrap();
    assert_eq!(count, 0, "nothing invalid was stored");
}

#[tokio::test]
async fn malformed_bodies_are_client_errors_never_500() {
    let app = spawn_app().await;
    let post = |body: &'static str, content_type: &'static str| {
        app.client
            .post(app.url("/products"))
            .header("content-type", content_type)
            .body(body)
            .send()
    };

    assert_problem(post("{\"sku\": ", "application/json").await.unwrap(), 400).await;
    assert_problem(
        post("sku=1", "application/x-www-form-urlencoded")
            .await
            .unwrap(),
        415,
    )
    .await;
    let missing = assert_problem(
        post(r#"{"sku": "A"}"#, "application/json").await.unwrap(),
        422,
    )
    .await;
    assert!(
        missing["detail"]
            .as_str()
            .unwrap()
            .contains("missing field"),
        "{missing}"
    );
    let wrong_type = post(
        r#"{"sku":"A","name":"n","price":{"amount_minor":"12","currency":"EUR"},"stock":1}"#,
        "application/json",
    );
    assert_problem(wrong_type.await.unwrap(), 422).await;

    let mut huge = product_body("BIG");
    huge["description"] = json!("x".repeat(70 * 1024));
    assert_problem(app.post_product(&huge).await, 413).await;
}

#[tokio::test]
async fn a_duplicate_sku_is_409() {
    let app = spawn_app().await;
    app.create_product("MUG-1").await;

    let problem = assert_problem(app.post_product(&product_body("MUG-1")).await, 409).await;

    assert!(problem["detail"].as_str().unwrap().contains("MUG-1"));
}

#[tokio::test]
async fn malformed_ids_unknown_products_routes_and_methods_are_problems() {
    let app = spawn_app().await;

    assert_problem(app.get("/products/not-a-uuid").await, 400).await;
    assert_problem(
        app.get(&format!("/products/{}", uuid::Uuid::now_v7()))
            .await,
        404,
    )
    .await;
    assert_problem(app.get("/no/such/route").await, 404).await;
    let put = app.client.put(app.url("/products")).send().await.unwrap();
    assert_problem(put, 405).await;
}

#[tokio::test]
async fn patch_with_the_current_etag_updates_and_bumps_the_version() {
    let app = spawn_app().await;
    let (product, etag) = app.create_product("MUG-1").await;
    let id = product["id"].as_str().unwrap();

    let response = app
        .patch(
            id,
            Some(&etag),
            &json!({"stock": 4, "price": {"amount_minor": 999, "currency": "USD"}}),
        )
        .await;

    assert_eq!(response.status(), 200);
    assert_eq!(etag_of(&response), "\"v2\"");
    let updated: Value = response.json().await.unwrap();
    assert_eq!(updated["stock"], 4);
    assert_eq!(
        updated["price"],
        json!({"amount_minor": 999, "currency": "USD"})
    );
    assert_eq!(
        updated["name"], product["name"],
        "absent fields are unchanged"
    );
}

#[tokio::test]
async fn patch_needs_if_match_and_refuses_a_stale_one() {
    let app = spawn_app().await;
    let (product, etag) = app.create_product("MUG-1").await;
    let id = product["id"].as_str().unwrap();
    assert_eq!(
        app.patch(id, Some(&etag), &json!({"stock": 1}))
            .await
            .status(),
        200
    );

    let stale = assert_problem(app.patch(id, Some(&etag), &json!({"stock": 2})).await, 412).await;
    let missing = assert_problem(app.patch(id, None, &json!({"stock": 2})).await, 428).await;
    let gone = app
        .patch(
            &uuid::Uuid::now_v7().to_string(),
            Some(&etag),
            &json!({"stock": 2}),
        )
        .await;
    let invalid = app.patch(id, Some("\"v2\""), &json!({"stock": -2})).await;
    let sku_change = app
        .patch(id, Some("\"v2\""), &json!({"sku": "OTHER"}))
        .await;
    let empty = app.patch(id, Some("\"v2\""), &json!({})).await;

    assert_eq!(stale["current_etag"], "\"v2\"");
    assert!(missing["detail"].as_str().unwrap().contains("If-Match"));
    assert_problem(gone, 404).await;
    assert_problem(invalid, 422).await;
    assert_problem(sku_change, 422).await;
    assert_problem(empty, 422).await;
    let current: Value = app
        .get(&format!("/products/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(current["stock"], 1, "refused changes changed nothing");
    assert_eq!(current["version"], 2);
}

#[tokio::test]
async fn of_concurrent_patches_with_the_same_if_match_exactly_one_wins() {
    let app = spawn_app().await;
    let (product, etag) = app.create_product("MUG-1").await;
    let id = product["id"].as_str().unwrap().to_owned();

    let attempts = (0..10).map(|stock| {
        let (client, url, etag) = (
            app.client.clone(),
            app.url(&format!("/products/{id}")),
            etag.clone(),
        );
        tokio::spawn(async move {
            let response = client
                .patch(url)
                .header("if-match", etag)
                .json(&json!({"stock": stock}))
                .send()
                .await
                .unwrap();
            (stock, response.status().as_u16())
        })
    });
    let mut outcomes = Vec::new();
    for attempt in attempts.collect::<Vec<_>>() {
        outcomes.push(attempt.await.unwrap());
    }

    let winners: Vec<_> = outcomes
        .iter()
        .filter(|(_, status)| *status == 200)
        .collect();
    assert_eq!(winners.len(), 1, "{outcomes:?}");
    assert!(
        outcomes
            .iter()
            .all(|(_, status)| [200, 412].contains(status)),
        "{outcomes:?}"
    );
    let current: Value = app
        .get(&format!("/products/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        current["stock"], winners[0].0,
        "the winner's change is the one stored"
    );
    assert_eq!(current["version"], 2);
}

#[tokio::test]
async fn delete_removes_the_product_and_honours_if_match() {
    let app = spawn_app().await;
    let (product, _) = app.create_product("MUG-1").await;
    let path = format!("/products/{}", product["id"].as_str().unwrap());

    let stale = app
        .client
        .delete(app.url(&path))
        .header("if-match", "\"v9\"")
        .send()
        .await
        .unwrap();
    assert_problem(stale, 412).await;
    let deleted = app
        .client
        .delete(app.url(&path))
        .header("if-match", "\"v1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);

    assert_problem(app.get(&path).await, 404).await;
    let again = app.client.delete(app.url(&path)).send().await.unwrap();
    assert_problem(again, 404).await;
}

/// The fields of `problem`'s `errors` list.
fn fields_of(problem: &serde_json::Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn control_characters_in_text_fields_are_422_naming_the_field_never_500() {
    let app = spawn_app().await;
    let (product, etag) = app.create_product("TEXT-1").await;
    let id = product["id"].as_str().unwrap();

    for text in ["nul \u{0} inside", "bell \u{7}", "escape \u{1b}[31m"] {
        for field in ["description", "name"] {
            let mut body = product_body("TEXT-2");
            body[field] = json!(text);
            let created = assert_problem(app.post_product(&body).await, 422).await;
            assert_eq!(fields_of(&created), [field], "{created}");

            let patched =
                assert_problem(app.patch(id, Some(&etag), &json!({field: text})).await, 422).await;
            assert_eq!(fields_of(&patched), [field], "{patched}");
        }
    }
    let mut multiline = product_body("TEXT-3");
    multiline["description"] = json!("Line one.\nLine two,\twith a tab.");
    assert_eq!(
        app.post_product(&multiline).await.status(),
        201,
        "newlines and tabs are text"
    );
}

#[tokio::test]
async fn numbers_past_their_documented_limits_are_422() {
    let app = spawn_app().await;
    let (product, etag) = app.create_product("BIG-1").await;
    let id = product["id"].as_str().unwrap();

    let mut body = product_body("BIG-2");
    body["stock"] = json!(1_000_000_001);
    assert_eq!(
        fields_of(&assert_problem(app.post_product(&body).await, 422).await),
        ["stock"]
    );
    let patched = assert_problem(
        app.patch(id, Some(&etag), &json!({"stock": 2_147_483_647}))
            .await,
        422,
    )
    .await;
    assert_eq!(fields_of(&patched), ["stock"]);
    let mut pricey = product_body("BIG-3");
    pricey["price"]["amount_minor"] = json!(1_000_000_000_001_i64);
    assert_eq!(
        fields_of(&assert_problem(app.post_product(&pricey).await, 422).await),
        ["price.amount_minor"]
    );

    let mut at_limit = product_body("BIG-4");
    at_limit["stock"] = json!(1_000_000_000);
    at_limit["price"]["amount_minor"] = json!(1_000_000_000_000_i64);
    assert_eq!(
        app.post_product(&at_limit).await.status(),
        201,
        "the limits themselves are fine"
    );
}

/// Reads asked for at once share queries: each still gets its own product, a missing one is a
/// 404, and a product changed before a read is asked for is never seen older.
#[tokio::test]
async fn concurrent_reads_each_get_their_own_product_and_never_an_older_one() {
    let app = spawn_app().await;
    let mut created = Vec::new();
    for n in 0..20 {
        created.push(app.create_product(&format!("READ-{n}")).await.0);
    }
    let missing = uuid::Uuid::now_v7();
    let reads = (0..200).map(|i| {
        let path = match created.get(i % 21) {
            Some(product) => format!("/products/{}", product["id"].as_str().unwrap()),
            None => format!("/products/{missing}"),
        };
        let app = &app;
        async move { (i % 21, app.get(&path).await) }
    });
    for (index, response) in futures_util::future::join_all(reads).await {
        match created.get(index) {
            Some(product) => {
                assert_eq!(response.status(), 200);
                assert_eq!(&response.json::<Value>().await.unwrap(), product);
            }
            None => {
                assert_problem(response, 404).await;
            }
        }
    }

    // A change, then reads under load: none sees the version before the change.
    let id = created[0]["id"].as_str().unwrap().to_owned();
    let changed = app.patch(&id, Some("*"), &json!({"stock": 99})).await;
    assert_eq!(changed.status(), 200);
    let path = format!("/products/{id}");
    let reads = (0..50).map(|_| app.get(&path));
    for response in futures_util::future::join_all(reads).await {
        let product: Value = response.json().await.unwrap();
        assert_eq!(
            (product["stock"].as_i64(), product["version"].as_i64()),
            (Some(99), Some(2))
        );
    }
}
