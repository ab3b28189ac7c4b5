//! Serves the uploads API on 127.0.0.1:3004 against `DATABASE_URL` (default: the local test
//! database).

use example_location_uploads::{app, migrate};
use idem_postgres::PostgresStore;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let pool = sqlx::PgPool::connect(&url).await?;
    migrate(&pool).await?;
    let store = PostgresStore::connect(&url).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3004").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app(pool, store)).await?;
    Ok(())
}
