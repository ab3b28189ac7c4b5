//! The store conformance suite against [`MemoryStore`].

use idem_core::MemoryStore;

idem_core::store_conformance_tests!(|clock| async move { MemoryStore::with_clock(clock) });
