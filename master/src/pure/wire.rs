//! The command socket's wire format, byte for byte as Einhorn 0.8.2 speaks it. Pure: no I/O.
//!
//! Every message, in both directions, is one line: a YAML document in which `%` is written `%25`
//! and a newline `%0A`, followed by one `\n`. A request is a mapping with a `command` key (JSON
//! objects are YAML too, which is how workers ACK); a reply is a mapping
//! `{message, request_id[, wait: true]}`.
//!
//! ```
//! use einhorn_master::pure::wire::{Reply, RequestId, encode_reply};
//!
//! let reply = Reply::last("Upgrade done", Some(RequestId::from(1)));
//! assert_eq!(encode_reply(&reply), "---%0Amessage: Upgrade done%0Arequest_id: 1%0A\n");
//! ```

use serde::{Deserialize, Serialize};
use serde_norway::Value;

/// Escapes a serialized message for the wire: `%` becomes `%25`, then a newline becomes `%0A`.
///
/// ```
/// assert_eq!(einhorn_master::pure::wire::escape("50%\nok"), "50%25%0Aok");
/// ```
pub fn escape(text: &str) -> String {
    text.replace('%', "%25").replace('\n', "%0A")
}

/// Undoes [`escape`] the way Einhorn does: `%0A` becomes a newline, then `%25` becomes `%`.
///
/// Any other `%` sequence is left as it is.
///
/// ```
/// use einhorn_master::pure::wire::{escape, unescape};
/// assert_eq!(unescape("50%25%0Aok"), "50%\nok");
/// assert_eq!(unescape(&escape("%0A")), "%0A");
/// ```
pub fn unescape(line: &str) -> String {
    line.replace("%0A", "\n").replace("%25", "%")
}

/// The `id` of a request, echoed back as `request_id` in every reply to it.
///
/// Any YAML scalar (string, number, boolean) is accepted and echoed as it came (`einhornsh`
/// sends integers); [`parse_request`] refuses a list or a mapping
/// ([`RequestError::BadField`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RequestId(Value);

impl RequestId {
    /// The id as an integer, when it is one.
    pub fn as_i64(&self) -> Option<i64> {
        self.0.as_i64()
    }
}

impl From<i64> for RequestId {
    fn from(id: i64) -> Self {
        RequestId(Value::from(id))
    }
}

impl From<&str> for RequestId {
    fn from(id: &str) -> Self {
        RequestId(Value::from(id))
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Value::String(s) => f.write_str(s),
            Value::Number(n) => write!(f, "{n}"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Null => f.write_str("null"),
            other => write!(f, "{other:?}"),
        }
    }
}

/// A request read from the command socket.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// The `command` key: `upgrade`, `worker:ack`, ...
    pub command: String,
    /// The `id` key (or, failing that, `request_id`), echoed in replies.
    pub id: Option<RequestId>,
    /// The `args` key: a list of scalars, each turned into a string.
    pub args: Option<Vec<String>>,
    /// The `pid` key (`worker:ack`, `worker:ping`).
    pub pid: Option<i64>,
    /// The `user` key (`ehlo`).
    pub user: Option<String>,
}

/// Most opening brackets (`[`, `{`) a request may contain: a bound on its nesting depth,
/// checked by [`prescan`] before any parsing.
pub const MAX_BRACKETS: usize = 32;

/// Why a request line could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RequestError {
    /// More opening brackets than [`MAX_BRACKETS`]: nesting that deep is refused unparsed.
    #[error(
        "request has {count} opening brackets ([ or {{), more than the {limit} accepted: nesting that deep is refused before parsing"
    )]
    TooNested {
        /// How many the line has (counted up to `limit + 1`).
        count: usize,
        /// [`MAX_BRACKETS`].
        limit: usize,
    },
    /// YAML anchors (`&`) together with aliases (`*`): refused unparsed, as alias expansion
    /// can be made to cost any amount of work.
    #[error("request uses yaml anchors and aliases (& and *), which are not accepted")]
    Aliases,
    /// The line is not valid UTF-8.
    #[error("request is not valid utf-8")]
    NotUtf8,
    /// The line is not YAML.
    #[error("request is not yaml: {0}")]
    NotYaml(String),
    /// The line is YAML, but not a mapping.
    #[error("request is not a mapping: {0}")]
    NotMapping(String),
    /// The mapping has no `command` key.
    #[error("request has no \"command\" key")]
    NoCommand,
    /// A key holds a value of the wrong type.
    #[error("request key {key:?} has an invalid value {value}")]
    BadField {
        /// The key at fault.
        key: &'static str,
        /// The value it holds, as YAML.
        value: String,
    },
}

impl RequestError {
    /// The message Einhorn replies with for this error.
    ///
    /// ```
    /// use einhorn_master::pure::wire::parse_request;
    /// let err = parse_request(b"just words").unwrap_err();
    /// assert!(err.reply_message().starts_with("Could not parse command"));
    /// ```
    pub fn reply_message(&self) -> String {
        match self {
            RequestError::NoCommand => {
                "No \"command\" parameter provided; not sure what you want me to do.".to_string()
            }
            other => format!("Could not parse command: {other}"),
        }
    }
}

/// Checks, in one pass over the bytes and before any parsing, that a request line cannot make
/// the YAML parser work hard: at most [`MAX_BRACKETS`] opening brackets, and not both anchors
/// and aliases.
///
/// Why brackets, not depth: the YAML scanner costs `tokens x flow depth` (a 64 KiB line of
/// `[` takes seconds), and counting every `[` and `{`, quoted or not, bounds that depth
/// whatever the line's quoting, which a depth counter would have to get exactly right. Real
/// requests have two or three brackets.
///
/// # Errors
/// [`RequestError::TooNested`], [`RequestError::Aliases`].
///
/// ```
/// use einhorn_master::pure::wire::{RequestError, prescan};
/// assert!(prescan(br#"{"command":"signal","args":["USR2"]}"#).is_ok());
/// let deep = format!(r#"{{"command": {}{}}}"#, "[".repeat(5000), "]".repeat(5000));
/// assert!(matches!(prescan(deep.as_bytes()), Err(RequestError::TooNested { .. })));
/// assert_eq!(prescan(b"a: &x [1]\nb: *x"), Err(RequestError::Aliases));
/// ```
pub fn prescan(line: &[u8]) -> Result<(), RequestError> {
    let mut count = 0;
    let (mut anchor, mut alias) = (false, false);
    for &byte in line {
        match byte {
            b'[' | b'{' => {
                count += 1;
                if count > MAX_BRACKETS {
                    return Err(RequestError::TooNested {
                        count,
                        limit: MAX_BRACKETS,
                    });
                }
            }
            b'&' => anchor = true,
            b'*' => alias = true,
            _ => {}
        }
    }
    if anchor && alias {
        return Err(RequestError::Aliases);
    }
    Ok(())
}

/// Parses one request line (without its trailing `\n`): checks it with [`prescan`], unescapes
/// it, then reads it as YAML. The work is linear in the line's length.
///
/// # Errors
/// A [`RequestError`] naming what is wrong; the master answers it with
/// [`RequestError::reply_message`].
///
/// # Example
/// ```
/// use einhorn_master::pure::wire::parse_request;
/// let request = parse_request(br#"{"command":"worker:ack","pid":12345}"#).unwrap();
/// assert_eq!(request.command, "worker:ack");
/// assert_eq!(request.pid, Some(12345));
///
/// let request = parse_request(b"---%0Acommand: set_workers%0Aargs:%0A- '4'%0Aid: 7%0A").unwrap();
/// assert_eq!(request.args, Some(vec!["4".to_string()]));
/// assert_eq!(request.id.and_then(|id| id.as_i64()), Some(7));
/// ```
pub fn parse_request(line: &[u8]) -> Result<Request, RequestError> {
    prescan(line)?;
    let line = std::str::from_utf8(line).map_err(|_| RequestError::NotUtf8)?;
    let text = unescape(line.strip_suffix('\r').unwrap_or(line));
    let value: Value =
        serde_norway::from_str(&text).map_err(|e| RequestError::NotYaml(e.to_string()))?;
    let Value::Mapping(map) = value else {
        return Err(RequestError::NotMapping(short(&text)));
    };
    let command = match map.get("command") {
        None | Some(Value::Null) => return Err(RequestError::NoCommand),
        Some(Value::String(s)) => s.clone(),
        Some(other) => scalar_string(other).ok_or_else(|| bad("command", other))?,
    };
    // A scalar only, as `RequestId` says: a list or mapping is no id a client sends, and one
    // with keys JSON cannot write would make `encode_request` fail on it.
    let id = ["id", "request_id"]
        .into_iter()
        .find_map(|key| Some((key, map.get(key).filter(|v| !v.is_null())?)))
        .map(|(key, value)| match value {
            Value::String(_) | Value::Number(_) | Value::Bool(_) => Ok(RequestId(value.clone())),
            other => Err(bad(key, other)),
        })
        .transpose()?;
    let args = match map.get("args") {
        None | Some(Value::Null) => None,
        Some(Value::Sequence(items)) => Some(
            items
                .iter()
                .map(|item| scalar_string(item).ok_or_else(|| bad("args", item)))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(other) => return Err(bad("args", other)),
    };
    let pid = match map.get("pid") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_i64().ok_or_else(|| bad("pid", v))?),
    };
    let user = match map.get("user") {
        None | Some(Value::Null) => None,
        Some(v) => Some(scalar_string(v).ok_or_else(|| bad("user", v))?),
    };
    Ok(Request {
        command,
        id,
        args,
        pid,
        user,
    })
}

fn scalar_string(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn bad(key: &'static str, value: &Value) -> RequestError {
    let value = serde_norway::to_string(value).unwrap_or_default();
    RequestError::BadField {
        key,
        value: short(value.trim_end()),
    }
}

fn short(text: &str) -> String {
    const MAX: usize = 80;
    let text = text.trim();
    match text.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_string(),
    }
}

/// One reply line: `message`, the `request_id` it answers, and whether more replies follow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// Human-readable text; may span lines.
    pub message: String,
    /// The `id` of the request this answers (`null` when it had none).
    #[serde(default)]
    pub request_id: Option<RequestId>,
    /// `true` when more replies to the same request follow (upgrade progress).
    #[serde(default, skip_serializing_if = "is_false")]
    pub wait: bool,
    /// `true` when the request failed. An extension to Einhorn's format, which has no error
    /// flag; Einhorn clients ignore keys they do not know.
    #[serde(default, skip_serializing_if = "is_false")]
    pub error: bool,
}

fn is_false(flag: &bool) -> bool {
    !*flag
}

impl Reply {
    /// A final reply (no `wait`).
    pub fn last(message: impl Into<String>, request_id: Option<RequestId>) -> Self {
        Reply {
            message: message.into(),
            request_id,
            wait: false,
            error: false,
        }
    }

    /// A reply that announces more to come (`wait: true`).
    pub fn more(message: impl Into<String>, request_id: Option<RequestId>) -> Self {
        Reply {
            wait: true,
            ..Reply::last(message, request_id)
        }
    }

    /// A final reply reporting a failure (`error: true`).
    pub fn failure(message: impl Into<String>, request_id: Option<RequestId>) -> Self {
        Reply {
            error: true,
            ..Reply::last(message, request_id)
        }
    }
}

/// Encodes a reply as one wire line, trailing `\n` included.
///
/// ```
/// use einhorn_master::pure::wire::{Reply, encode_reply};
/// assert_eq!(
///     encode_reply(&Reply::more("100% up", None)),
///     "---%0Amessage: 100%25 up%0Arequest_id: null%0Await: true%0A\n",
/// );
/// ```
pub fn encode_reply(reply: &Reply) -> String {
    // Serializing a struct of strings, options and booleans cannot fail.
    let yaml = serde_norway::to_string(reply).expect("a reply always serializes");
    let mut line = escape(&format!("---\n{yaml}"));
    line.push('\n');
    line
}

/// Decodes one reply line (with or without its trailing `\n`).
///
/// # Errors
/// [`ReplyError`] when the line is not a YAML reply mapping.
///
/// ```
/// use einhorn_master::pure::wire::decode_reply;
/// let reply = decode_reply(b"---%0Amessage: Upgrade done%0Arequest_id: 1%0A\n").unwrap();
/// assert_eq!(reply.message, "Upgrade done");
/// assert!(!reply.wait);
/// ```
pub fn decode_reply(line: &[u8]) -> Result<Reply, ReplyError> {
    let text = std::str::from_utf8(line).map_err(|_| ReplyError {
        line: String::from_utf8_lossy(line).into_owned(),
        reason: "not valid utf-8".to_string(),
    })?;
    let text = text.strip_suffix('\n').unwrap_or(text);
    serde_norway::from_str(&unescape(text)).map_err(|e| ReplyError {
        line: short(text),
        reason: e.to_string(),
    })
}

/// A reply line that could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("reply {line:?} is not a yaml reply mapping: {reason}")]
pub struct ReplyError {
    /// The line at fault (shortened).
    pub line: String,
    /// What the YAML parser said.
    pub reason: String,
}

/// Encodes a request as one wire line (escaped JSON, trailing `\n` included), the way a client
/// sends it.
///
/// Any text comes back from [`parse_request`] as it was given: inside strings, the characters
/// a YAML parser would refuse or fold (DEL, C1 controls, NEL, LS, PS, U+FFFE, U+FFFF) and
/// those [`prescan`] counts (`[`, `{`, `&`, `*`) are written `\uXXXX`.
///
/// ```
/// use einhorn_master::pure::wire::{RequestId, encode_request};
/// let line = encode_request("signal", &["USR2"], Some(&RequestId::from(3)));
/// assert_eq!(line, "{\"command\":\"signal\",\"args\":[\"USR2\"],\"id\":3}\n");
/// ```
pub fn encode_request(command: &str, args: &[&str], id: Option<&RequestId>) -> String {
    #[derive(Serialize)]
    struct Out<'a> {
        command: &'a str,
        args: &'a [&'a str],
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
    }
    let json =
        serde_json::to_string(&Out { command, args, id }).expect("a request always serializes");
    let mut line = escape(&yaml_safe(json));
    line.push('\n');
    line
}

/// Writes as `\uXXXX`, inside the JSON's strings, the characters that would stop the master
/// (or Einhorn) from reading the request as a JSON parser would:
/// - DEL and the C1 controls, U+FFFE and U+FFFF: YAML refuses them as they are;
/// - NEL, LS and PS: YAML reads them as line breaks and folds them into a space;
/// - `[`, `{`, `&` and `*`: [`prescan`] counts them wherever they are, so a string holding
///   many brackets, or both `&` and `*`, would have the request refused unparsed.
///
/// serde_json escapes the C0 controls itself; `\uXXXX` means the same to JSON and YAML.
fn yaml_safe(json: String) -> String {
    let hidden = |c: char| {
        matches!(
            c,
            '[' | '{' | '&' | '*' | '\u{2028}' | '\u{2029}' | '\u{fffe}' | '\u{ffff}'
        ) || ('\u{7f}'..='\u{9f}').contains(&c)
    };
    let mut safe = String::with_capacity(json.len());
    let (mut in_string, mut after_backslash) = (false, false);
    for c in json.chars() {
        if in_string && !after_backslash && hidden(c) {
            safe.push_str(&format!("\\u{:04x}", u32::from(c)));
            continue;
        }
        safe.push(c);
        if after_backslash {
            after_backslash = false;
        } else if c == '\\' {
            after_backslash = in_string;
        } else if c == '"' {
            in_string = !in_string;
        }
    }
    safe
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_and_unescape_round_trip() {
        for text in [
            "",
            "plain",
            "%",
            "%%",
            "%0A",
            "%25",
            "%250A",
            "a\nb",
            "\n\n%\n",
            "100% sure\nnext",
            "%2%0A5",
        ] {
            assert_eq!(unescape(&escape(text)), text, "{text:?}");
            assert!(!escape(text).contains('\n'));
        }
    }

    #[test]
    fn unescape_matches_einhorn_order() {
        // `%0A` first, then `%25`: `%250A` is a literal `%0A`.
        assert_eq!(unescape("%250A"), "%0A");
        assert_eq!(unescape("%0A%25"), "\n%");
        assert_eq!(unescape("%41%2"), "%41%2");
        assert_eq!(unescape("%0a"), "%0a");
    }

    #[test]
    fn upgrade_done_is_byte_exact() {
        let reply = Reply::last("Upgrade done", Some(RequestId::from(1)));
        assert_eq!(
            encode_reply(&reply).as_bytes(),
            b"---%0Amessage: Upgrade done%0Arequest_id: 1%0A\n"
        );
    }

    #[test]
    fn wait_and_error_flags_are_encoded() {
        assert_eq!(
            encode_reply(&Reply::more("Upgrading smoothly, as commanded", None)),
            "---%0Amessage: Upgrading smoothly, as commanded%0Arequest_id: null%0Await: true%0A\n"
        );
        assert_eq!(
            encode_reply(&Reply::failure("Could not parse command", Some("x".into()))),
            "---%0Amessage: Could not parse command%0Arequest_id: x%0Aerror: true%0A\n"
        );
    }

    #[test]
    fn multi_line_and_percent_messages_round_trip() {
        for message in [
            "line one\nline two\n",
            "50% done",
            "%0A is not a newline",
            "key: value",
            "- dash",
            "trailing spaces   ",
            "unicode: ✓",
            "",
        ] {
            let reply = Reply::more(message, Some(RequestId::from(9)));
            let line = encode_reply(&reply);
            assert_eq!(line.matches('\n').count(), 1, "{line:?}");
            assert!(line.ends_with('\n'));
            assert_eq!(decode_reply(line.as_bytes()).unwrap(), reply);
        }
    }

    #[test]
    fn parses_the_worker_ack() {
        let request = parse_request(b"{\"command\":\"worker:ack\",\"pid\":12345}").unwrap();
        assert_eq!(
            request,
            Request {
                command: "worker:ack".into(),
                id: None,
                args: None,
                pid: Some(12345),
                user: None,
            }
        );
    }

    #[test]
    fn parses_einhornsh_style_yaml() {
        let line = escape("---\ncommand: signal\nargs:\n- USR2\nid: 4\nuser: gdb\n");
        let request = parse_request(line.as_bytes()).unwrap();
        assert_eq!(request.command, "signal");
        assert_eq!(request.args, Some(vec!["USR2".to_string()]));
        assert_eq!(request.id, Some(RequestId::from(4)));
        assert_eq!(request.user.as_deref(), Some("gdb"));
    }

    #[test]
    fn request_id_key_is_accepted_and_numbers_become_strings() {
        let request =
            parse_request(br#"{"command":"set_workers","args":[3],"request_id":"r1"}"#).unwrap();
        assert_eq!(request.id, Some(RequestId::from("r1")));
        assert_eq!(request.args, Some(vec!["3".to_string()]));
    }

    /// Found writing the `command_line` fuzz target: an id that is a mapping with a list for a
    /// key was accepted, and `encode_request` panicked on it (JSON keys are strings).
    #[test]
    fn ids_are_scalars() {
        for (line, key) in [
            (&br#"{command: x, id: {[1]: 2}}"#[..], "id"),
            (b"{command: x, id: {null: 2}}", "id"),
            (b"{command: x, id: [1]}", "id"),
            (b"{command: x, id: !tag 5}", "id"),
            (b"{command: x, request_id: {a: 1}}", "request_id"),
        ] {
            let err = parse_request(line).unwrap_err();
            assert!(
                matches!(err, RequestError::BadField { key: k, .. } if k == key),
                "{err:?}"
            );
        }
        for (line, id) in [
            (&b"{command: x, id: 5}"[..], RequestId::from(5)),
            (b"{command: x, id: five}", RequestId::from("five")),
            (b"{command: x, id: null, request_id: 6}", RequestId::from(6)),
        ] {
            let request = parse_request(line).unwrap();
            assert_eq!(request.id.as_ref(), Some(&id));
            let again = encode_request(&request.command, &[], request.id.as_ref());
            assert_eq!(
                parse_request(again.trim_end().as_bytes()).unwrap().id,
                Some(id)
            );
        }
    }

    #[test]
    fn a_trailing_carriage_return_is_ignored() {
        assert_eq!(
            parse_request(b"{\"command\":\"ehlo\"}\r").unwrap().command,
            "ehlo"
        );
    }

    #[test]
    fn bad_requests_are_named() {
        assert!(matches!(
            parse_request(b"just words"),
            Err(RequestError::NotMapping(_))
        ));
        assert!(matches!(parse_request(b"{"), Err(RequestError::NotYaml(_))));
        assert!(matches!(
            parse_request(b""),
            Err(RequestError::NotMapping(_))
        ));
        assert!(matches!(
            parse_request(b"[1, 2]"),
            Err(RequestError::NotMapping(_))
        ));
        assert_eq!(parse_request(b"{\"pid\":1}"), Err(RequestError::NoCommand));
        assert_eq!(parse_request(&[0xff, 0xfe]), Err(RequestError::NotUtf8));
        assert!(matches!(
            parse_request(br#"{"command":"worker:ack","pid":"12"}"#),
            Err(RequestError::BadField { key: "pid", .. })
        ));
        assert!(matches!(
            parse_request(br#"{"command":"signal","args":"USR2"}"#),
            Err(RequestError::BadField { key: "args", .. })
        ));
        assert!(matches!(
            parse_request(br#"{"command":"signal","args":[[1]]}"#),
            Err(RequestError::BadField { key: "args", .. })
        ));
    }

    #[test]
    fn hostile_lines_are_refused_before_parsing_and_cheaply() {
        let max = 64 * 1024 - 32;
        let fill = |prefix: &str, unit: &str, suffix: &str| {
            let mut line = prefix.to_string();
            while line.len() + unit.len() + suffix.len() <= max {
                line.push_str(unit);
            }
            line + suffix
        };
        let depth = 32_000;
        let nested = format!(
            "{{\"command\": {}{}}}",
            "[".repeat(depth),
            "]".repeat(depth)
        );
        let hostile = [
            nested,
            fill("", "[", ""),
            fill("", "{a: ", ""),
            // Quotes and comments cannot hide brackets from the count.
            fill("command: x\nargs: ", "[ '\"]]' #]\n", ""),
            format!("a0: &a0 [x,x,x]\n{}", "a1: &a1 [*a0,*a0,*a0]\n".repeat(10)),
        ];
        for line in &hostile {
            let started = std::time::Instant::now();
            let err = parse_request(line.as_bytes()).unwrap_err();
            let took = started.elapsed();
            assert!(
                matches!(err, RequestError::TooNested { .. } | RequestError::Aliases),
                "{err}"
            );
            assert!(err.reply_message().starts_with("Could not parse command"));
            // Debug build, busy machine: still far below the seconds the parser would take.
            assert!(took < std::time::Duration::from_millis(50), "{took:?}");
        }
        // At the limit, a request still parses.
        let ok = format!(
            "{{\"command\": \"ehlo\", \"user\": {}{}}}",
            "[".repeat(MAX_BRACKETS - 1),
            "]".repeat(MAX_BRACKETS - 1)
        );
        assert!(matches!(
            parse_request(ok.as_bytes()),
            Err(RequestError::BadField { key: "user", .. })
        ));
        assert!(parse_request(b"{\"command\":\"ehlo\",\"user\":\"a&b\"}").is_ok());
        assert!(parse_request(b"{\"command\":\"ehlo\",\"user\":\"a*b\"}").is_ok());
    }

    #[test]
    fn error_replies_follow_einhorn() {
        let err = parse_request(b"nope").unwrap_err();
        assert!(err.reply_message().starts_with("Could not parse command"));
        assert_eq!(
            RequestError::NoCommand.reply_message(),
            "No \"command\" parameter provided; not sure what you want me to do."
        );
    }

    #[test]
    fn requests_encode_as_escaped_json() {
        assert_eq!(
            encode_request("ehlo", &[], None),
            "{\"command\":\"ehlo\",\"args\":[]}\n"
        );
        let line = encode_request("signal", &["100%\n"], Some(&RequestId::from(2)));
        assert_eq!(
            line,
            "{\"command\":\"signal\",\"args\":[\"100%25\\n\"],\"id\":2}\n"
        );
        let request = parse_request(line.trim_end().as_bytes()).unwrap();
        assert_eq!(request.args, Some(vec!["100%\n".to_string()]));
    }

    /// Found by the property tests: serde_json writes these characters as they are, and the
    /// YAML parser refused the request (DEL, C1 controls, U+FFFE), folded the character into
    /// a space (NEL, LS, PS), or the pre-scan refused it (`[`, `{`, `&` with `*`).
    #[test]
    fn requests_carry_any_text() {
        let many_brackets = "[{".repeat(MAX_BRACKETS);
        for text in [
            "\u{7f}",
            "a\u{85}b",
            "\u{9f}",
            "\u{2028}\u{2029}",
            "\u{fffe}\u{ffff}",
            "\u{80}%\n",
            "&anchor *alias",
            "\\\"[\\",
            &many_brackets,
        ] {
            let line = encode_request(text, &[text], Some(&RequestId::from(text)));
            let request = parse_request(line.trim_end().as_bytes()).unwrap();
            assert_eq!(request.command, text);
            assert_eq!(request.args, Some(vec![text.to_string()]));
            assert_eq!(request.id, Some(RequestId::from(text)));
        }
        assert_eq!(
            encode_request("a\u{85}&", &["[*]"], None),
            "{\"command\":\"a\\u0085\\u0026\",\"args\":[\"\\u005b\\u002a]\"]}\n"
        );
    }
}
