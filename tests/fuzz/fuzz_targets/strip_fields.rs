#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| sessiongate_fuzz::strip_fields(data));
