//! Serves the bookings API on 127.0.0.1:3002 with the embedded store in `./idem-bookings-data`.

use std::sync::Arc;

use example_bookings::{Calendar, app};
use idem_embedded::EmbeddedStore;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3002").await?;
    println!("listening on http://{}", listener.local_addr()?);
    let store = EmbeddedStore::open("idem-bookings-data")?;
    axum::serve(listener, app(store, Arc::new(Calendar::default()))).await?;
    Ok(())
}
