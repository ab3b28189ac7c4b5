//! Serves `POST /register` on 127.0.0.1:3003 with the embedded store in
//! `./idem-registration-data`.

use std::sync::Arc;

use example_registration::{Registrar, app};
use idem_core::Engine;
use idem_embedded::EmbeddedStore;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3003").await?;
    println!("listening on http://{}", listener.local_addr()?);
    let registrar = Arc::new(Registrar::new(Engine::new(EmbeddedStore::open(
        "idem-registration-data",
    )?)));
    axum::serve(listener, app(registrar)).await?;
    Ok(())
}
