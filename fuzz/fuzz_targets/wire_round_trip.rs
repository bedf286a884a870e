//! Requests and replies, on structured input: what the encoders write is one line that
//! decodes to what they were given.

#![no_main]

use arbitrary::Arbitrary;
use einhorn_master::wire::{
    Reply, Request, RequestId, decode_reply, encode_reply, encode_request, parse_request,
};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Id {
    Number(i64),
    Text(String),
}

impl From<Id> for RequestId {
    fn from(id: Id) -> RequestId {
        match id {
            Id::Number(n) => RequestId::from(n),
            Id::Text(text) => RequestId::from(text.as_str()),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    command: String,
    args: Vec<String>,
    id: Option<Id>,
    message: String,
    wait: bool,
    error: bool,
}

fuzz_target!(|input: Input| {
    let id: Option<RequestId> = input.id.map(RequestId::from);

    let args: Vec<&str> = input.args.iter().map(String::as_str).collect();
    let line = encode_request(&input.command, &args, id.as_ref());
    assert_eq!(line.find('\n'), Some(line.len() - 1), "{line:?}");
    let request = parse_request(line.trim_end_matches('\n').as_bytes());
    assert_eq!(
        request,
        Ok(Request {
            command: input.command,
            id: id.clone(),
            args: Some(input.args),
            pid: None,
            user: None,
        }),
        "{line:?}"
    );

    let reply = Reply {
        message: input.message,
        request_id: id,
        wait: input.wait,
        error: input.error,
    };
    let line = encode_reply(&reply);
    assert_eq!(line.find('\n'), Some(line.len() - 1), "{line:?}");
    assert_eq!(decode_reply(line.as_bytes()), Ok(reply), "{line:?}");
});
