//! Serves the todo API on 127.0.0.1:3001 with the embedded store in `./idem-todos-data`.

use std::sync::Arc;

use example_todos::{Todos, app};
use idem_embedded::EmbeddedStore;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3001").await?;
    println!("listening on http://{}", listener.local_addr()?);
    let store = EmbeddedStore::open("idem-todos-data")?;
    axum::serve(listener, app(store, Arc::new(Todos::default()))).await?;
    Ok(())
}
