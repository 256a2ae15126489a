#![no_main]
use libfuzzer_sys::fuzz_target;

// dhcproto 0.15 debug-asserts some option lengths; `pxe::dhcp::decode` catches those panics
// (a malformed message, as in a release build where the asserts are gone). Panics raised
// inside dhcproto are therefore not crashes here; any other panic still aborts.
static HOOK: std::sync::Once = std::sync::Once::new();

fuzz_target!(|data: &[u8]| {
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            if info.location().is_some_and(|l| l.file().contains("dhcproto")) {
                return;
            }
            eprintln!("{info}");
            std::process::abort();
        }));
    });
    pxe::fuzzing::dhcp(data)
});
