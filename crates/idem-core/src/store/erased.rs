//! [`ErasedStore`] and [`DynStore`]: a store chosen at run time (from a URL, say) behind one
//! type, at the cost of one allocation per call.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::{
    BeginOutcome, BeginRequest, CompleteRequest, DurabilityRisk, RecordSnapshot, Store, StoreError,
    TransitionOutcome, Watch,
};
use crate::{LeaseToken, RecordId};

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The object-safe form of [`Store`]. Every [`Store`] is an `ErasedStore`; [`DynStore`]
/// makes one a [`Store`] again.
pub trait ErasedStore: Send + Sync + 'static {
    /// See [`Store::begin`].
    fn begin(&self, request: BeginRequest) -> BoxFuture<'_, Result<BeginOutcome, StoreError>>;
    /// See [`Store::renew`].
    fn renew(
        &self,
        id: RecordId,
        token: LeaseToken,
        lease: Duration,
    ) -> BoxFuture<'_, Result<TransitionOutcome, StoreError>>;
    /// See [`Store::complete`].
    fn complete(
        &self,
        request: CompleteRequest,
    ) -> BoxFuture<'_, Result<TransitionOutcome, StoreError>>;
    /// See [`Store::release`].
    fn release(
        &self,
        id: RecordId,
        token: LeaseToken,
    ) -> BoxFuture<'_, Result<TransitionOutcome, StoreError>>;
    /// See [`Store::get`].
    fn get(&self, id: RecordId) -> BoxFuture<'_, Result<Option<RecordSnapshot>, StoreError>>;
    /// See [`Store::sweep_expired`].
    fn sweep_expired(&self, limit: usize) -> BoxFuture<'_, Result<usize, StoreError>>;
    /// See [`Store::durability_risks`].
    fn durability_risks(&self) -> BoxFuture<'_, Result<Vec<DurabilityRisk>, StoreError>>;
    /// See [`Store::watch`].
    fn watch(&self, id: RecordId) -> BoxFuture<'_, Result<Watch, StoreError>>;
}

impl<S: Store> ErasedStore for S {
    fn begin(&self, request: BeginRequest) -> BoxFuture<'_, Result<BeginOutcome, StoreError>> {
        Box::pin(Store::begin(self, request))
    }
    fn renew(
        &self,
        id: RecordId,
        token: LeaseToken,
        lease: Duration,
    ) -> BoxFuture<'_, Result<TransitionOutcome, StoreError>> {
        Box::pin(Store::renew(self, id, token, lease))
    }
    fn complete(
        &self,
        request: CompleteRequest,
    ) -> BoxFuture<'_, Result<TransitionOutcome, StoreError>> {
        Box::pin(Store::complete(self, request))
    }
    fn release(
        &self,
        id: RecordId,
        token: LeaseToken,
    ) -> BoxFuture<'_, Result<TransitionOutcome, StoreError>> {
        Box::pin(Store::release(self, id, token))
    }
    fn get(&self, id: RecordId) -> BoxFuture<'_, Result<Option<RecordSnapshot>, StoreError>> {
        Box::pin(Store::get(self, id))
    }
    fn sweep_expired(&self, limit: usize) -> BoxFuture<'_, Result<usize, StoreError>> {
        Box::pin(Store::sweep_expired(self, limit))
    }
    fn durability_risks(&self) -> BoxFuture<'_, Result<Vec<DurabilityRisk>, StoreError>> {
        Box::pin(Store::durability_risks(self))
    }
    fn watch(&self, id: RecordId) -> BoxFuture<'_, Result<Watch, StoreError>> {
        Box::pin(Store::watch(self, id))
    }
}

/// Any store behind one type: a [`Store`] that forwards to an [`ErasedStore`]. Cloning shares
/// the store.
///
/// A newtype rather than `impl Store for Arc<dyn ErasedStore>`: the compiler cannot always
/// prove a trait object's `'static` bound inside `Send` futures, and a type without a
/// lifetime sidesteps it.
#[derive(Clone)]
pub struct DynStore(Arc<dyn ErasedStore>);

impl DynStore {
    /// Erases `store`'s type.
    pub fn new(store: impl Store) -> Self {
        Self(Arc::new(store))
    }
}

impl std::fmt::Debug for DynStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DynStore")
    }
}

impl Store for DynStore {
    fn begin(
        &self,
        request: BeginRequest,
    ) -> impl Future<Output = Result<BeginOutcome, StoreError>> + Send {
        self.0.begin(request)
    }
    fn renew(
        &self,
        id: RecordId,
        token: LeaseToken,
        lease: Duration,
    ) -> impl Future<Output = Result<TransitionOutcome, StoreError>> + Send {
        self.0.renew(id, token, lease)
    }
    fn complete(
        &self,
        request: CompleteRequest,
    ) -> impl Future<Output = Result<TransitionOutcome, StoreError>> + Send {
        self.0.complete(request)
    }
    fn release(
        &self,
        id: RecordId,
        token: LeaseToken,
    ) -> impl Future<Output = Result<TransitionOutcome, StoreError>> + Send {
        self.0.release(id, token)
    }
    fn get(
        &self,
        id: RecordId,
    ) -> impl Future<Output = Result<Option<RecordSnapshot>, StoreError>> + Send {
        self.0.get(id)
    }
    fn sweep_expired(
        &self,
        limit: usize,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send {
        self.0.sweep_expired(limit)
    }
    fn durability_risks(
        &self,
    ) -> impl Future<Output = Result<Vec<DurabilityRisk>, StoreError>> + Send {
        self.0.durability_risks()
    }
    fn watch(&self, id: RecordId) -> impl Future<Output = Result<Watch, StoreError>> + Send {
        self.0.watch(id)
    }
}
