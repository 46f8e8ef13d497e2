//! Request paths as the gateway routes them: normalised first, so that no spelling of a path
//! reaches an upstream resource its plain spelling would not, and the upstream's internal
//! resources kept off the public port.
//!
//! Normalisation (RFC 3986 §6.2.2, plus what servers behind a proxy are known to accept):
//! percent-encoded unreserved characters are decoded (`%2e` is `.`, `%6d` is `m`), other
//! escapes are kept with upper-case hex; `\` is read as `/`; empty segments (`//`) are
//! dropped; `.` and `..` segments are resolved. An encoded `/`, `\` or NUL, a malformed
//! escape, or a `..` above the root is refused (`400`): there is no one right reading of it.
//! The upstream receives the normalised path, the one that was routed.

use std::borrow::Cow;

use dockyard_runtime::problem::Problem;

/// The normalised form of `path` (borrowed when it already is), or `400`.
pub fn normalise(path: &str) -> Result<Cow<'_, str>, Problem> {
    if !path.starts_with('/') {
        return Ok(Cow::Borrowed(path)); // `*` (OPTIONS): matches no route
    }
    let bytes = path.as_bytes();
    let plain = !bytes.iter().any(|&b| b == b'%' || b == b'\\')
        && !path.contains("//")
        && !path
            .split('/')
            .any(|segment| segment == "." || segment == "..");
    if plain {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode(bytes)?;
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                if segments.pop().is_none() {
                    return Err(Problem::bad_request(format!(
                        "the path `{path}` climbs above the root"
                    )));
                }
            }
            segment => segments.push(segment),
        }
    }
    let mut normalised = String::with_capacity(decoded.len());
    for segment in &segments {
        normalised.push('/');
        normalised.push_str(segment);
    }
    let directory = decoded.ends_with('/')
        || decoded.ends_with("/.")
        || decoded.ends_with("/..")
        || segments.is_empty();
    if directory {
        normalised.push('/');
    }
    Ok(Cow::Owned(normalised))
}

/// Decodes what may be decoded and reads `\` as `/`; see the module documentation.
fn decode(bytes: &[u8]) -> Result<String, Problem> {
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|pair| std::str::from_utf8(pair).ok())
                    .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                    .ok_or_else(|| Problem::bad_request("the path has a malformed %-escape"))?;
                match hex {
                    b'/' | b'\\' | 0 => {
                        return Err(Problem::bad_request(
                            "the path has an encoded `/`, `\\` or NUL, which the gateway does not route",
                        ));
                    }
                    b if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') => {
                        out.push(char::from(b));
                    }
                    b => {
                        const HEX: &[u8; 16] = b"0123456789ABCDEF";
                        out.push('%');
                        out.push(char::from(HEX[usize::from(b >> 4)]));
                        out.push(char::from(HEX[usize::from(b & 0xF)]));
                    }
                }
                i += 3;
            }
            b'\\' => {
                out.push('/');
                i += 1;
            }
            b => {
                // The path came through `http::Uri`, which admits only ASCII.
                out.push(char::from(b));
                i += 1;
            }
        }
    }
    Ok(out)
}

/// An upstream's own resources (`INTERNAL_PATHS`): metrics, health, API documents. Reached by
/// the platform directly, never through a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InternalPaths(Vec<String>);

impl InternalPaths {
    /// From a comma-separated list of paths, each starting with `/`.
    pub fn parse(list: &str) -> Result<Self, String> {
        list.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                if p.starts_with('/') && p.len() > 1 {
                    Ok(p.trim_end_matches('/').to_owned())
                } else {
                    Err(format!("`{p}` must be a path starting with /"))
                }
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// Whether `path` (as the upstream would see it, normalised) is one of them or under one.
    pub fn contains(&self, path: &str) -> bool {
        self.0.iter().any(|internal| {
            path.strip_prefix(internal.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_are_borrowed_unchanged() {
        for path in [
            "/",
            "/api/catalog/products",
            "/a/.well-known/x",
            "/a/b/",
            "*",
        ] {
            assert!(matches!(normalise(path).unwrap(), Cow::Borrowed(p) if p == path));
        }
    }

    #[test]
    fn every_spelling_of_a_path_normalises_to_one() {
        for (raw, expected) in [
            ("/api/catalog/../catalog/metrics", "/api/catalog/metrics"),
            (
                "/api/catalog/%2e%2e/catalog/metrics",
                "/api/catalog/metrics",
            ),
            ("/api/catalog/%2E/metrics", "/api/catalog/metrics"),
            ("/api/catalog/\\..\\metrics", "/api/metrics"),
            ("/api/catalog/x\\..\\metrics", "/api/catalog/metrics"),
            ("/api/catalog//metrics", "/api/catalog/metrics"),
            ("//api///catalog/metrics", "/api/catalog/metrics"),
            ("/api/catalog/%6detrics", "/api/catalog/metrics"),
            ("/api/catalog/./products/", "/api/catalog/products/"),
            ("/api/catalog/products/..", "/api/catalog/"),
            ("/api/catalog/a%20b%3f", "/api/catalog/a%20b%3F"),
            ("/api/catalog/%25", "/api/catalog/%25"),
        ] {
            assert_eq!(normalise(raw).unwrap(), expected, "{raw}");
        }
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for raw in [
            "/api/catalog/%2fmetrics",
            "/api/catalog/%2Fmetrics",
            "/api/catalog/%5cmetrics",
            "/api/catalog/%00",
            "/api/catalog/%zz",
            "/api/catalog/%2",
            "/../etc",
            "/api/../../x",
        ] {
            assert_eq!(normalise(raw).unwrap_err().status, 400, "{raw}");
        }
    }

    #[test]
    fn internal_paths_match_whole_segments() {
        let internal = InternalPaths::parse("/metrics, /health/,/openapi.json").unwrap();
        for path in [
            "/metrics",
            "/metrics/",
            "/health",
            "/health/ready",
            "/openapi.json",
        ] {
            assert!(internal.contains(path), "{path}");
        }
        for path in ["/metricsx", "/products", "/healthy", "/"] {
            assert!(!internal.contains(path), "{path}");
        }
        assert!(InternalPaths::parse("metrics").is_err());
        assert!(InternalPaths::parse("").unwrap().0.is_empty());
    }
}
