//! Serves the example on 127.0.0.1:3000 with the embedded store in `./idem-example-data`.
//!
//! ```text
//! curl -i -X POST localhost:3000/charges -H 'Idempotency-Key: 3f1c…' \
//!      -H 'Content-Type: application/json' -d '{"amount":1000,"currency":"eur"}'
//! ```

use std::sync::Arc;

use example_axum_charges::{Ledger, app};
use idem_embedded::EmbeddedStore;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = EmbeddedStore::open("idem-example-data")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app(store, Arc::new(Ledger::default()))).await?;
    Ok(())
}
