//! `postbox openapi`: the OpenAPI document, for review diffs and client generators.

use std::path::Path;

use anyhow::Context;

/// Prints the document, or writes it to `output`.
pub fn run(output: Option<&Path>) -> anyhow::Result<i32> {
    let doc = crate::http::openapi_json();
    match output {
        Some(path) => {
            std::fs::write(path, doc).with_context(|| format!("cannot write {}", path.display()))?
        }
        None => println!("{doc}"),
    }
    Ok(0)
}
