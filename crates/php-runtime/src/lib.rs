//! The FastCGI half of tqserver-php, which needs no libphp.
//!
//! [`worker`] decodes requests from the web server's connection and encodes
//! the responses; what runs a request is a [`worker::Runner`]: PHP in the
//! `tqserver-php` binary (src/ffi.rs), a stand-in in the unit tests and in
//! the fuzz target (fuzz/fuzz_targets/worker.rs). Built without the `php`
//! feature the package compiles no C and links no libphp, so the fuzz target
//! runs the production decoding without PHP.

pub mod worker;
