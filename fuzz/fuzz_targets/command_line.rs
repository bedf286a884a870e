//! The master's command-socket lines: decoding any bytes never panics, the pre-scan refuses
//! exactly the lines it should, and a request that parses, written again by the client's
//! encoder, parses to the same request.

#![no_main]

use einhorn_master::command::{COMMANDS, DecodeError, decode};
use einhorn_master::wire::{
    MAX_BRACKETS, RequestError, decode_reply, encode_request, parse_request, prescan,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &[u8]| {
    let brackets = line.iter().filter(|&&b| b == b'[' || b == b'{').count();
    let aliased = line.contains(&b'&') && line.contains(&b'*');
    match prescan(line) {
        Ok(()) => assert!(brackets <= MAX_BRACKETS && !aliased),
        Err(RequestError::TooNested { .. }) => assert!(brackets > MAX_BRACKETS),
        Err(RequestError::Aliases) => assert!(brackets <= MAX_BRACKETS && aliased),
        Err(other) => panic!("prescan said {other:?}"),
    }

    let parsed = parse_request(line);
    match decode(line) {
        Ok((id, command)) => {
            assert_eq!(
                id,
                parsed.as_ref().expect("decode accepted a bad request").id
            );
            assert!(COMMANDS.iter().any(|(name, _)| *name == command.name()));
        }
        Err(DecodeError::Request(err)) => assert_eq!(parsed.as_ref(), Err(&err)),
        Err(DecodeError::Command { .. }) => assert!(parsed.is_ok()),
    }

    if let Ok(request) = parsed {
        let args: Vec<&str> = request.args.iter().flatten().map(String::as_str).collect();
        let again = encode_request(&request.command, &args, request.id.as_ref());
        let reparsed = parse_request(again.trim_end_matches('\n').as_bytes()).expect("re-encoded");
        assert_eq!(reparsed.command, request.command);
        assert_eq!(
            reparsed.args.unwrap_or_default(),
            request.args.unwrap_or_default()
        );
        // Compared as JSON has them: a NaN or infinite id is written `null`.
        let json = |id| serde_json::to_value(id).expect("a scalar id");
        assert_eq!(json(&reparsed.id), json(&request.id));
    }

    let _ = decode_reply(line);
});
