//! The store conformance suite against [`EmbeddedStore`] in a temporary directory.

use idem_embedded::EmbeddedStore;

idem_core::store_conformance_tests!(async {
    let directory = tempfile::tempdir().expect("a temporary directory");
    // The store keeps its file open; the directory is removed when the test process ends.
    EmbeddedStore::open(directory.keep()).expect("the store opens")
});
