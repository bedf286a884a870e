//! `SERVER_STARTER_PORT`: any value parses to entries that, written back as `key=fd;...`,
//! parse to the same entries, or is refused naming the variable and the value.

#![no_main]

use graceful_listener::env::{Environment, SERVER_STARTER_PORT};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|value: &str| {
    let env = Environment::from_vars([(SERVER_STARTER_PORT, value)], 2, 1);
    match env.starter_ports() {
        Ok(Some(ports)) => {
            assert!(!ports.is_empty());
            let written: Vec<String> = ports
                .iter()
                .map(|p| format!("{}={}", p.key, p.fd))
                .collect();
            let again = Environment::from_vars([(SERVER_STARTER_PORT, written.join(";"))], 2, 1);
            assert_eq!(again.starter_ports(), Ok(Some(ports.clone())));
            for (index, port) in ports.iter().enumerate() {
                assert!(port.fd >= 0 && !port.key.is_empty());
                assert_eq!(env.starter_port(index).as_ref(), Ok(port));
                let named = env
                    .starter_port_named(&port.key)
                    .expect("a key names its entry");
                assert!(named.is_named(&port.key));
            }
        }
        Ok(None) => unreachable!("the variable is set"),
        Err(err) => {
            let message = err.to_string();
            assert!(
                message.starts_with(&format!("{SERVER_STARTER_PORT}={value:?} is not ")),
                "{message}"
            );
        }
    }
});
