//! The `healthcheck` command: asks the server on this host whether it is ready. Container
//! images ship no curl, so `HEALTHCHECK CMD ["catalog", "healthcheck"]` runs this instead.

use std::time::Duration;

/// `Ok` when `http://127.0.0.1:{port}/health/ready` answers 2xx within two seconds.
pub async fn probe(port: u16) -> Result<(), String> {
    let url = format!("http://127.0.0.1:{port}/health/ready");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| e.to_string())?;
    let response = client
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("{url} answered {}", response.status()))
    }
}
