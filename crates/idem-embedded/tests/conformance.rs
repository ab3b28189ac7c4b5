//! The store conformance suite against [`EmbeddedStore`] in a temporary directory, on the
//! suite's manual clock.

use idem_embedded::EmbeddedStore;

idem_core::store_conformance_tests!(|clock| async move {
    let directory = tempfile::tempdir().expect("a temporary directory");
    // The store keeps its file open; the directory is removed when the test process ends.
    EmbeddedStore::builder(directory.keep())
        .clock(clock)
        .open()
        .expect("the store opens")
});
