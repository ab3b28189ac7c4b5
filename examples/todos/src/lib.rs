//! The todo API of seed 002, made idempotent the two ways that document describes:
//!
//! - `DELETE /todos/{id}` is idempotent by design: it answers 204 whether or not the todo
//!   still exists, so a retried DELETE never turns into a 404.
//! - `POST /todos` is idempotent by key: behind [`IdempotencyLayer`], a retry with the same
//!   `Idempotency-Key` returns the todo the first attempt created instead of a second one; a
//!   new key creates a new todo.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, post};
use axum::{Json, Router};
use idem_core::Store;
use idem_http::IdempotencyLayer;
use serde::{Deserialize, Serialize};

/// A todo.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Todo {
    /// Assigned on creation.
    pub id: u64,
    /// What to do.
    pub title: String,
}

/// `POST /todos` input.
#[derive(Debug, Deserialize)]
pub struct NewTodo {
    /// What to do.
    pub title: String,
}

/// The todo list, in memory.
#[derive(Debug, Default)]
pub struct Todos {
    items: Mutex<(u64, BTreeMap<u64, Todo>)>,
}

impl Todos {
    /// How many todos exist.
    pub fn count(&self) -> usize {
        self.items.lock().map_or(0, |items| items.1.len())
    }
}

async fn create(
    State(todos): State<Arc<Todos>>,
    Json(new): Json<NewTodo>,
) -> Result<(StatusCode, Json<Todo>), StatusCode> {
    let mut items = todos
        .items
        .lock()
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    items.0 += 1;
    let todo = Todo {
        id: items.0,
        title: new.title,
    };
    items.1.insert(todo.id, todo.clone());
    Ok((StatusCode::CREATED, Json(todo)))
}

/// Always 204: the todo is gone afterwards either way, which is what the client asked for.
async fn remove(State(todos): State<Arc<Todos>>, Path(id): Path<u64>) -> StatusCode {
    if let Ok(mut items) = todos.items.lock() {
        items.1.remove(&id);
    }
    StatusCode::NO_CONTENT
}

async fn read(
    State(todos): State<Arc<Todos>>,
    Path(id): Path<u64>,
) -> Result<Json<Todo>, StatusCode> {
    let items = todos
        .items
        .lock()
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    items
        .1
        .get(&id)
        .cloned()
        .map(Json)
        .ok_or(StatusCode::NOT_FOUND)
}

/// The router: the layer covers POST (and would cover DELETE too, harmlessly).
pub fn app<St: Store>(store: St, todos: Arc<Todos>) -> Router {
    Router::new()
        .route("/todos", post(create))
        .route("/todos/{id}", delete(remove).get(read))
        .with_state(todos)
        .layer(IdempotencyLayer::new(store))
}
