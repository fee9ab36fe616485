//! LDAP stage: the StartTLS extended operation, a simple bind and a search, encoded in the few
//! BER shapes they need (RFC 4511). Responses are size-bounded.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::ldap_filter::{self, tlv};
use super::net::{BoxStream, Deadline, Failure};
use crate::api::endpoint::SearchScope;
use crate::api::result::{Reason, Stage};

const START_TLS_OID: &str = "1.3.6.1.4.1.1466.20037";
/// Largest LDAP message accepted (a base-scope search with no attributes is tiny).
const MAX_MESSAGE: usize = 256 * 1024;

const TAG_BIND_REQUEST: u8 = 0x60;
const TAG_BIND_RESPONSE: u8 = 0x61;
const TAG_SEARCH_REQUEST: u8 = 0x63;
const TAG_SEARCH_ENTRY: u8 = 0x64;
const TAG_SEARCH_DONE: u8 = 0x65;
const TAG_SEARCH_REFERENCE: u8 = 0x73;
const TAG_EXTENDED_REQUEST: u8 = 0x77;
const TAG_EXTENDED_RESPONSE: u8 = 0x78;

fn integer(value: u32) -> Vec<u8> {
    let mut bytes: Vec<u8> = value
        .to_be_bytes()
        .into_iter()
        .skip_while(|b| *b == 0)
        .collect();
    if bytes.first().is_none_or(|b| b & 0x80 != 0) {
        bytes.insert(0, 0);
    }
    tlv(0x02, &bytes)
}

fn message(id: u32, op: Vec<u8>) -> Vec<u8> {
    let mut body = integer(id);
    body.extend(op);
    tlv(0x30, &body)
}

pub fn start_tls_request(id: u32) -> Vec<u8> {
    message(
        id,
        tlv(TAG_EXTENDED_REQUEST, &tlv(0x80, START_TLS_OID.as_bytes())),
    )
}

pub fn bind_request(id: u32, dn: &str, password: &str) -> Vec<u8> {
    let mut op = integer(3);
    op.extend(tlv(0x04, dn.as_bytes()));
    op.extend(tlv(0x80, password.as_bytes()));
    message(id, tlv(TAG_BIND_REQUEST, &op))
}

/// A search returning no attributes ("1.1") and at most `size_limit` entries; `filter` is
/// the encoded filter.
pub fn search_request(
    id: u32,
    base: &str,
    scope: SearchScope,
    size_limit: u32,
    filter: &[u8],
) -> Vec<u8> {
    let scope = match scope {
        SearchScope::Base => 0,
        SearchScope::OneLevel => 1,
        SearchScope::Subtree => 2,
    };
    let mut op = tlv(0x04, base.as_bytes());
    op.extend(tlv(0x0a, &[scope]));
    op.extend(tlv(0x0a, &[0])); // derefAliases: never
    op.extend(integer(size_limit));
    op.extend(integer(10)); // timeLimit (s)
    op.extend(tlv(0x01, &[0])); // typesOnly: false
    op.extend_from_slice(filter);
    op.extend(tlv(0x30, &tlv(0x04, b"1.1")));
    message(id, tlv(TAG_SEARCH_REQUEST, &op))
}

/// The name of an LDAP result code (RFC 4511 appendix A), as directories log it.
pub fn result_name(code: u32) -> &'static str {
    match code {
        0 => "success",
        1 => "operationsError",
        2 => "protocolError",
        3 => "timeLimitExceeded",
        4 => "sizeLimitExceeded",
        7 => "authMethodNotSupported",
        8 => "strongerAuthRequired",
        10 => "referral",
        11 => "adminLimitExceeded",
        13 => "confidentialityRequired",
        14 => "saslBindInProgress",
        32 => "noSuchObject",
        34 => "invalidDNSyntax",
        48 => "inappropriateAuthentication",
        49 => "invalidCredentials",
        50 => "insufficientAccessRights",
        51 => "busy",
        52 => "unavailable",
        53 => "unwillingToPerform",
        80 => "other",
        _ => "unknown",
    }
}

/// What an Active Directory `data NNN` sub-code in a bind diagnostic means.
fn ad_bind_data(diagnostic: &str) -> Option<&'static str> {
    let at = diagnostic.find("data ")?;
    let code: String = diagnostic[at + 5..]
        .chars()
        .take_while(char::is_ascii_hexdigit)
        .collect();
    Some(match code.to_ascii_lowercase().as_str() {
        "525" => "the user does not exist",
        "52e" => "the password is wrong",
        "530" => "the account may not log on at this time",
        "531" => "the account may not log on from this workstation",
        "532" => "the password has expired",
        "533" => "the account is disabled",
        "701" => "the account has expired",
        "773" => "the password must be changed at next logon",
        "775" => "the account is locked out",
        _ => return None,
    })
}

/// A parsed response: the operation tag, and for LDAPResult-shaped ones the result code and
/// diagnostic message.
#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    pub op: u8,
    pub result_code: Option<u32>,
    pub diagnostic: String,
}

impl Response {
    /// `invalidCredentials (49): <diagnostic>`, for messages.
    fn outcome(&self) -> String {
        let code = match self.result_code {
            Some(code) => format!("{} ({code})", result_name(code)),
            None => "no result code".to_owned(),
        };
        if self.diagnostic.is_empty() {
            code
        } else {
            format!("{code}: {}", self.diagnostic)
        }
    }
}

/// Reads a TLV header: (tag, length, header size).
fn header(bytes: &[u8]) -> Option<(u8, usize, usize)> {
    let tag = *bytes.first()?;
    let first = *bytes.get(1)? as usize;
    if first < 0x80 {
        return Some((tag, first, 2));
    }
    let count = first & 0x7f;
    if count == 0 || count > 4 {
        return None;
    }
    let mut len = 0usize;
    for i in 0..count {
        len = (len << 8) | *bytes.get(2 + i)? as usize;
    }
    Some((tag, len, 2 + count))
}

/// Splits consecutive TLVs of `bytes` into (tag, content).
fn elements(mut bytes: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (tag, len, head) = header(bytes)?;
        let content = bytes.get(head..head + len)?;
        out.push((tag, content));
        bytes = &bytes[head + len..];
    }
    Some(out)
}

pub fn parse_response(message: &[u8]) -> Option<Response> {
    let outer = elements(message)?;
    let (0x30, body) = *outer.first()? else {
        return None;
    };
    let parts = elements(body)?;
    let (op, content) = *parts.get(1)?;
    let fields = elements(content).unwrap_or_default();
    let result_code = match fields.first() {
        Some((0x0a, value)) if op != TAG_SEARCH_ENTRY => {
            Some(value.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)))
        }
        _ => None,
    };
    let diagnostic = fields
        .get(2)
        .map(|(_, text)| String::from_utf8_lossy(text).into_owned())
        .unwrap_or_default();
    Some(Response {
        op,
        result_code,
        diagnostic,
    })
}

/// A connection speaking LDAP.
pub struct LdapConn {
    pub stream: BoxStream,
    next_id: u32,
}

impl LdapConn {
    pub fn new(stream: BoxStream) -> Self {
        Self { stream, next_id: 1 }
    }

    fn id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    async fn read_message(&mut self) -> std::io::Result<Vec<u8>> {
        let invalid =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
        let mut head = vec![0u8; 2];
        self.stream.read_exact(&mut head).await?;
        if head[0] != 0x30 {
            return Err(invalid("not an LDAP message"));
        }
        if head[1] & 0x80 != 0 {
            let count = (head[1] & 0x7f) as usize;
            if count == 0 || count > 4 {
                return Err(invalid("bad BER length"));
            }
            let mut more = vec![0u8; count];
            self.stream.read_exact(&mut more).await?;
            head.extend(more);
        }
        let (_, len, _) = header(&head).ok_or_else(|| invalid("bad BER length"))?;
        if len > MAX_MESSAGE {
            return Err(invalid(&format!(
                "the server announced an LDAP message of {len} bytes, too large (the limit is {} KiB)",
                MAX_MESSAGE / 1024
            )));
        }
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body).await?;
        head.extend(body);
        Ok(head)
    }

    async fn exchange(
        &mut self,
        request: Vec<u8>,
        expect: &[u8],
        target: &str,
        what: &str,
        stage: Stage,
        deadline: &Deadline,
    ) -> Result<(Response, usize), Failure> {
        let fail = |e: std::io::Error| {
            Failure::new(
                stage,
                Reason::ProtocolError,
                format!("LDAP {what} with {target} failed: {e}"),
            )
        };
        let run = async {
            self.stream.write_all(&request).await.map_err(fail)?;
            let mut entries = 0;
            loop {
                let raw = self.read_message().await.map_err(fail)?;
                let response = parse_response(&raw).ok_or_else(|| {
                    Failure::new(
                        stage,
                        Reason::ProtocolError,
                        format!("{target} sent a malformed LDAP {what} response"),
                    )
                })?;
                if expect.contains(&response.op) {
                    return Ok((response, entries));
                }
                if response.op == TAG_SEARCH_ENTRY {
                    entries += 1;
                }
                // Entries and references before SearchResultDone are read and skipped.
                if !matches!(response.op, TAG_SEARCH_ENTRY | TAG_SEARCH_REFERENCE) {
                    return Err(Failure::new(
                        stage,
                        Reason::ProtocolError,
                        format!(
                            "{target} answered the LDAP {what} with an unexpected operation (tag {:#x})",
                            response.op
                        ),
                    ));
                }
            }
        };
        deadline
            .run(
                stage,
                Reason::ResponseTimeout,
                || format!("{target} did not answer the LDAP {what}"),
                run,
            )
            .await
    }

    /// Asks for StartTLS; the caller runs the handshake when this succeeds.
    pub async fn start_tls(&mut self, target: &str, deadline: &Deadline) -> Result<(), Failure> {
        let id = self.id();
        let (response, _) = self
            .exchange(
                start_tls_request(id),
                &[TAG_EXTENDED_RESPONSE],
                target,
                "StartTLS",
                Stage::StartTls,
                deadline,
            )
            .await?;
        match response.result_code {
            Some(0) => Ok(()),
            _ => Err(Failure::new(
                Stage::StartTls,
                Reason::StartTlsRejected,
                format!("{target} refused LDAP StartTLS ({})", response.outcome()),
            )),
        }
    }

    /// Simple bind; an empty DN binds anonymously. The DN is sent as written (AD takes
    /// `DOMAIN\user` and `user@domain` too). An anonymous bind fails at the Protocol stage:
    /// no credentials were involved.
    pub async fn bind(
        &mut self,
        dn: &str,
        password: &str,
        target: &str,
        deadline: &Deadline,
    ) -> Result<(), Failure> {
        let stage = if dn.is_empty() {
            Stage::Protocol
        } else {
            Stage::Auth
        };
        let id = self.id();
        let (response, _) = self
            .exchange(
                bind_request(id, dn, password),
                &[TAG_BIND_RESPONSE],
                target,
                "bind",
                stage,
                deadline,
            )
            .await?;
        if response.result_code == Some(0) {
            return Ok(());
        }
        let outcome = super::sasl::scrub(&response.outcome(), &[password.to_owned()]);
        let who = if dn.is_empty() { "anonymous" } else { dn };
        let advice = match (response.result_code, ad_bind_data(&response.diagnostic)) {
            (_, Some(meaning)) => format!("{meaning}; fix the account or the bind Secret"),
            (Some(49), None) => "check bindDN and password in the bind Secret".to_owned(),
            (Some(8 | 13), _) => {
                "the directory requires TLS for binds: set tls.mode: StartTLS or use LDAPS"
                    .to_owned()
            }
            (Some(48 | 53), _) if dn.is_empty() => {
                "the directory refuses anonymous binds: set ldap.bindSecretRef".to_owned()
            }
            _ => "check the bind account on the directory".to_owned(),
        };
        Err(Failure::new(
            stage,
            Reason::BindFailed,
            format!("{target} refused the bind as {who}: {outcome}; {advice}"),
        ))
    }

    /// Reads `base` itself (scope base, the root DSE when empty): it exists and the account
    /// may see it.
    pub async fn search_base(
        &mut self,
        base: &str,
        stage: Stage,
        target: &str,
        deadline: &Deadline,
    ) -> Result<(), Failure> {
        let filter = ldap_filter::encode("(objectClass=*)").expect("a valid constant filter");
        self.search(base, SearchScope::Base, &filter, 1, stage, target, deadline)
            .await
            .map(|_| ())
    }

    /// Searches under `base` for at most `size_limit` entries and returns how many came back.
    #[allow(clippy::too_many_arguments)]
    pub async fn search(
        &mut self,
        base: &str,
        scope: SearchScope,
        filter: &[u8],
        size_limit: u32,
        stage: Stage,
        target: &str,
        deadline: &Deadline,
    ) -> Result<usize, Failure> {
        let id = self.id();
        let (response, entries) = self
            .exchange(
                search_request(id, base, scope, size_limit, filter),
                &[TAG_SEARCH_DONE],
                target,
                "search",
                stage,
                deadline,
            )
            .await?;
        let shown = if base.is_empty() {
            "the root DSE"
        } else {
            base
        };
        match response.result_code {
            // The size limit is the probe's own: reaching it means enough entries came back.
            Some(0 | 4) => Ok(entries),
            Some(32) => Err(Failure::new(
                stage,
                Reason::NoSuchBaseDn,
                format!(
                    "{shown} does not exist on {target} ({}); check baseDN in the profile",
                    response.outcome()
                ),
            )),
            Some(50) => Err(Failure::new(
                stage,
                Reason::SearchFailed,
                format!(
                    "the bind account may not read {shown} on {target} ({}); grant it read access",
                    response.outcome()
                ),
            )),
            _ => Err(Failure::new(
                stage,
                Reason::SearchFailed,
                format!(
                    "searching {shown} on {target} failed ({}); check baseDN and the account's rights",
                    response.outcome()
                ),
            )),
        }
    }

    pub async fn unbind(&mut self) {
        let id = self.id();
        let _ = self.stream.write_all(&message(id, vec![0x42, 0x00])).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_tls_request_is_the_rfc_4511_encoding() {
        let bytes = start_tls_request(1);
        let mut expected = vec![0x30, 0x1d, 0x02, 0x01, 0x01, 0x77, 0x18, 0x80, 0x16];
        expected.extend_from_slice(START_TLS_OID.as_bytes());
        assert_eq!(bytes, expected);
    }

    #[test]
    fn bind_response_result_and_diagnostic_parse() {
        // BindResponse, messageID 2, resultCode 49, matchedDN "", diagnostic "bad".
        let op = [0x0a, 0x01, 0x31, 0x04, 0x00, 0x04, 0x03, b'b', b'a', b'd'];
        let msg = message(2, tlv(TAG_BIND_RESPONSE, &op));
        let parsed = parse_response(&msg).unwrap();
        assert_eq!(parsed.op, TAG_BIND_RESPONSE);
        assert_eq!(parsed.result_code, Some(49));
        assert_eq!(parsed.diagnostic, "bad");
    }

    #[test]
    fn long_form_lengths_round_trip() {
        let long = "x".repeat(300);
        let msg = bind_request(7, &long, "pw");
        let (tag, len, head) = header(&msg).unwrap();
        assert_eq!((tag, head + len), (0x30, msg.len()));
        assert!(parse_response(&msg).is_some());
    }

    #[test]
    fn ad_bind_names_pass_through_untouched() {
        for dn in [
            "AD\\svc-reader",
            "svc-reader@corp.example.com",
            "CN=Svc Reader,OU=Service,DC=corp",
        ] {
            let msg = bind_request(1, dn, "pw");
            let wanted = tlv(0x04, dn.as_bytes());
            assert!(
                msg.windows(wanted.len()).any(|w| w == wanted.as_slice()),
                "{dn} is sent as written"
            );
        }
    }

    #[test]
    fn a_search_asks_for_no_attributes_and_at_most_the_entries_it_needs() {
        let filter = ldap_filter::encode("(uid=*)").unwrap();
        let msg = search_request(
            3,
            "ou=people,dc=example,dc=com",
            SearchScope::Subtree,
            5,
            &filter,
        );
        let mut tail = vec![0x0a, 0x01, 0x02, 0x0a, 0x01, 0x00, 0x02, 0x01, 0x05];
        tail.extend([0x02, 0x01, 0x0a, 0x01, 0x01, 0x00]);
        tail.extend(&filter);
        tail.extend(tlv(0x30, &tlv(0x04, b"1.1")));
        assert!(
            msg.ends_with(&tail),
            "scope subtree, size limit 5, attributes 1.1: {msg:02x?}"
        );
        let base = search_request(4, "", SearchScope::Base, 1, &filter);
        assert!(base.windows(3).any(|w| w == [0x0a, 0x01, 0x00]));
    }

    #[test]
    fn ad_diagnostics_are_spelled_out() {
        let diagnostic = "80090308: LdapErr: DSID-0C09044E, comment: AcceptSecurityContext error, data 532, v4563";
        assert_eq!(ad_bind_data(diagnostic), Some("the password has expired"));
        assert_eq!(
            ad_bind_data("data 52e, v2580"),
            Some("the password is wrong")
        );
        assert_eq!(ad_bind_data("no data here"), None);
        assert_eq!(result_name(49), "invalidCredentials");
    }

    #[test]
    fn garbage_does_not_parse() {
        assert!(parse_response(&[0x30, 0x05, 0x02]).is_none());
        assert!(parse_response(b"HTTP/1.1 200 OK").is_none());
    }
}
