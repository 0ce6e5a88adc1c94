#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis_dataplane::fuzz::request_heads(data));
