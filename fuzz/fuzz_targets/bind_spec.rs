//! Bind specs: any string parses to a value whose printed spec parses back to it, or is
//! refused with an error naming the string.

#![no_main]

use graceful_listener::Bind;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|spec: &str| {
    match spec.parse::<Bind>() {
        Ok(bind) => {
            let printed = bind.to_string();
            assert_eq!(
                printed.parse::<Bind>().as_ref(),
                Ok(&bind),
                "{spec:?} printed as {printed:?}"
            );
        }
        Err(err) => {
            assert_eq!(err.spec(), spec);
            assert!(
                err.to_string()
                    .starts_with(&format!("invalid bind spec {spec:?}: "))
            );
        }
    }
});
