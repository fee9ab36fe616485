//! Client side of the login mechanisms the mail protocols share: SASL PLAIN, LOGIN, CRAM-MD5
//! and NTLM (NTLMv2), and POP3's APOP digest. Pure: bytes in, bytes out, no I/O. Every value
//! these functions return carries a credential, so callers send it and never show it.

use std::fmt;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use md4::Md4;
use md5::{Digest, Md5};

type HmacMd5 = Hmac<Md5>;

/// A login mechanism as the protocols name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Login,
    CramMd5,
    Ntlm,
}

impl Mechanism {
    /// The SASL name (`AUTH=CRAM-MD5`, `AUTH CRAM-MD5`).
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
            Mechanism::CramMd5 => "CRAM-MD5",
            Mechanism::Ntlm => "NTLM",
        }
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Who logs in. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    /// NTLM domain; empty when the username carries it (`user@domain`).
    pub domain: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

/// One SASL client conversation: answers each server challenge in turn. The challenges and
/// answers are raw bytes; the protocols base64 them on the wire.
pub struct SaslClient<'a> {
    mechanism: Mechanism,
    credentials: &'a Credentials,
    step: usize,
    /// Everything this conversation sent, so callers can scrub it from server text.
    sent: Vec<Vec<u8>>,
}

impl<'a> SaslClient<'a> {
    pub fn new(mechanism: Mechanism, credentials: &'a Credentials) -> Self {
        Self {
            mechanism,
            credentials,
            step: 0,
            sent: Vec::new(),
        }
    }

    /// The answer to the next challenge. Errors say what was wrong with the challenge.
    pub fn respond(&mut self, challenge: &[u8]) -> Result<Vec<u8>, String> {
        let step = self.step;
        self.step += 1;
        let c = self.credentials;
        let answer = match (self.mechanism, step) {
            (Mechanism::Plain, 0) => plain(&c.username, &c.password),
            // LOGIN servers prompt "Username:" then "Password:", but the prompts vary; the
            // order does not.
            (Mechanism::Login, 0) => c.username.as_bytes().to_vec(),
            (Mechanism::Login, 1) => c.password.as_bytes().to_vec(),
            (Mechanism::CramMd5, 0) => cram_md5(&c.username, &c.password, challenge).into_bytes(),
            (Mechanism::Ntlm, 0) => ntlm::negotiate(),
            (Mechanism::Ntlm, 1) => {
                let parsed = ntlm::Challenge::parse(challenge)?;
                let mut client_challenge = [0u8; 8];
                ring::rand::SecureRandom::fill(
                    &ring::rand::SystemRandom::new(),
                    &mut client_challenge,
                )
                .map_err(|_| "no randomness for the NTLM client challenge".to_owned())?;
                let timestamp = parsed.timestamp().unwrap_or_else(ntlm::filetime_now);
                ntlm::authenticate(&parsed, c, client_challenge, timestamp)
            }
            (mechanism, _) => {
                return Err(format!(
                    "the server asked for more than {mechanism} has to say"
                ));
            }
        };
        self.sent.push(answer.clone());
        Ok(answer)
    }

    /// Strings that must never appear in anything shown: the password, and each answer sent
    /// as raw text and as base64.
    pub fn secrets(&self) -> Vec<String> {
        let mut out = vec![self.credentials.password.clone()];
        for answer in &self.sent {
            out.push(base64::engine::general_purpose::STANDARD.encode(answer));
            if let Ok(text) = std::str::from_utf8(answer) {
                out.push(text.to_owned());
            }
        }
        out.retain(|s| !s.is_empty());
        out
    }
}

/// Replaces every occurrence of each secret in `text` with `***`; for quoting server replies,
/// which could echo what was sent.
pub fn scrub(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_owned();
    let mut sorted: Vec<&String> = secrets.iter().filter(|s| !s.is_empty()).collect();
    // Longest first: a password inside a base64 blob must not leave half the blob behind.
    sorted.sort_by_key(|s| std::cmp::Reverse(s.len()));
    for secret in sorted {
        out = out.replace(secret.as_str(), "***");
    }
    out
}

/// SASL PLAIN (RFC 4616): no authorization identity, `\0user\0password`.
pub fn plain(username: &str, password: &str) -> Vec<u8> {
    let mut out = vec![0u8];
    out.extend_from_slice(username.as_bytes());
    out.push(0);
    out.extend_from_slice(password.as_bytes());
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// CRAM-MD5 (RFC 2195): `user hex(HMAC-MD5(password, challenge))`.
pub fn cram_md5(username: &str, password: &str, challenge: &[u8]) -> String {
    let mut mac = HmacMd5::new_from_slice(password.as_bytes()).expect("HMAC takes any key length");
    mac.update(challenge);
    format!("{username} {}", hex(&mac.finalize().into_bytes()))
}

/// APOP (RFC 1939): `hex(MD5(timestamp password))`, the timestamp with its angle brackets.
pub fn apop(timestamp: &str, password: &str) -> String {
    let mut md5 = Md5::new();
    md5.update(timestamp.as_bytes());
    md5.update(password.as_bytes());
    hex(&md5.finalize())
}

/// The `<...>` timestamp of a POP3 greeting, which APOP needs.
pub fn apop_timestamp(greeting: &str) -> Option<&str> {
    let start = greeting.find('<')?;
    let end = start + greeting[start..].find('>')?;
    let stamp = &greeting[start..=end];
    stamp.contains('@').then_some(stamp)
}

/// NTLM messages (MS-NLMP): NEGOTIATE, CHALLENGE parsing, and an NTLMv2 AUTHENTICATE.
pub mod ntlm {
    use super::*;

    const SIGNATURE: &[u8; 8] = b"NTLMSSP\0";
    const NEGOTIATE_UNICODE: u32 = 0x0000_0001;
    const NEGOTIATE_OEM: u32 = 0x0000_0002;
    const REQUEST_TARGET: u32 = 0x0000_0004;
    const NEGOTIATE_NTLM: u32 = 0x0000_0200;
    const ALWAYS_SIGN: u32 = 0x0000_8000;
    const EXTENDED_SESSION_SECURITY: u32 = 0x0008_0000;
    const NEGOTIATE_128: u32 = 0x2000_0000;
    const NEGOTIATE_56: u32 = 0x8000_0000;
    const FLAGS: u32 = NEGOTIATE_UNICODE
        | NEGOTIATE_OEM
        | REQUEST_TARGET
        | NEGOTIATE_NTLM
        | ALWAYS_SIGN
        | EXTENDED_SESSION_SECURITY
        | NEGOTIATE_128
        | NEGOTIATE_56;
    /// AV pair id of the server's FILETIME in the target info.
    const AV_TIMESTAMP: u16 = 7;
    /// Largest CHALLENGE message accepted.
    const MAX_CHALLENGE: usize = 64 * 1024;

    /// The NEGOTIATE message (type 1), without domain or workstation.
    pub fn negotiate() -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.extend(1u32.to_le_bytes());
        out.extend(FLAGS.to_le_bytes());
        out.extend([0u8; 16]); // empty domain and workstation fields
        out
    }

    /// What a CHALLENGE message (type 2) carries for the answer.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct Challenge {
        pub flags: u32,
        pub server_challenge: [u8; 8],
        pub target_info: Vec<u8>,
    }

    fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
        Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
    }

    fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
        Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
    }

    impl Challenge {
        pub fn parse(bytes: &[u8]) -> Result<Self, String> {
            let bad = |what: &str| format!("the NTLM challenge is malformed ({what})");
            if bytes.len() > MAX_CHALLENGE {
                return Err(bad("too large"));
            }
            if bytes.get(..8) != Some(SIGNATURE.as_slice()) || u32_at(bytes, 8) != Some(2) {
                return Err(bad("not an NTLMSSP CHALLENGE message"));
            }
            let flags = u32_at(bytes, 20).ok_or_else(|| bad("no flags"))?;
            let server_challenge: [u8; 8] = bytes
                .get(24..32)
                .and_then(|c| c.try_into().ok())
                .ok_or_else(|| bad("no server challenge"))?;
            // The target info fields sit at 40 in every version of the message; older
            // servers end the header at 32 and send none.
            let target_info = match (u16_at(bytes, 40), u32_at(bytes, 44)) {
                (Some(len), Some(offset)) if bytes.len() >= 48 => {
                    let (len, offset) = (usize::from(len), offset as usize);
                    bytes
                        .get(offset..offset + len)
                        .ok_or_else(|| bad("target info out of bounds"))?
                        .to_vec()
                }
                _ => Vec::new(),
            };
            Ok(Self {
                flags,
                server_challenge,
                target_info,
            })
        }

        /// The server's MsvAvTimestamp, when its target info has one.
        pub fn timestamp(&self) -> Option<u64> {
            let mut at = 0;
            while let (Some(id), Some(len)) = (
                u16_at(&self.target_info, at),
                u16_at(&self.target_info, at + 2),
            ) {
                let value = self.target_info.get(at + 4..at + 4 + usize::from(len))?;
                match id {
                    0 => return None,
                    AV_TIMESTAMP => return Some(u64::from_le_bytes(value.try_into().ok()?)),
                    _ => at += 4 + usize::from(len),
                }
            }
            None
        }
    }

    /// Now as a Windows FILETIME (100 ns since 1601-01-01).
    pub fn filetime_now() -> u64 {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        (unix.as_nanos() / 100) as u64 + 116_444_736_000_000_000
    }

    fn utf16le(text: &str) -> Vec<u8> {
        text.encode_utf16().flat_map(u16::to_le_bytes).collect()
    }

    fn hmac_md5(key: &[u8], parts: &[&[u8]]) -> [u8; 16] {
        let mut mac = HmacMd5::new_from_slice(key).expect("HMAC takes any key length");
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    /// NTOWFv1: MD4 of the UTF-16LE password (the NT hash).
    pub fn nt_hash(password: &str) -> [u8; 16] {
        Md4::digest(utf16le(password)).into()
    }

    /// NTOWFv2: HMAC-MD5(NT hash, UTF-16LE(upper(user) domain)).
    pub fn ntowf_v2(password: &str, username: &str, domain: &str) -> [u8; 16] {
        let identity = utf16le(&format!("{}{domain}", username.to_uppercase()));
        hmac_md5(&nt_hash(password), &[&identity])
    }

    /// The NTLMv2 response: NTProofStr followed by the client blob it signs.
    pub fn ntlmv2_response(
        key: &[u8; 16],
        server_challenge: &[u8; 8],
        client_challenge: [u8; 8],
        timestamp: u64,
        target_info: &[u8],
    ) -> Vec<u8> {
        let mut blob = vec![1u8, 1, 0, 0, 0, 0, 0, 0];
        blob.extend(timestamp.to_le_bytes());
        blob.extend(client_challenge);
        blob.extend([0u8; 4]);
        blob.extend_from_slice(target_info);
        blob.extend([0u8; 4]);
        let proof = hmac_md5(key, &[server_challenge, &blob]);
        let mut out = proof.to_vec();
        out.extend(blob);
        out
    }

    /// The LMv2 response: HMAC-MD5(key, server challenge, client challenge), client challenge.
    pub fn lmv2_response(
        key: &[u8; 16],
        server_challenge: &[u8; 8],
        client_challenge: [u8; 8],
    ) -> Vec<u8> {
        let mut out = hmac_md5(key, &[server_challenge, &client_challenge]).to_vec();
        out.extend(client_challenge);
        out
    }

    /// The AUTHENTICATE message (type 3) answering `challenge` with NTLMv2.
    pub fn authenticate(
        challenge: &Challenge,
        credentials: &Credentials,
        client_challenge: [u8; 8],
        timestamp: u64,
    ) -> Vec<u8> {
        let (user, domain) = match credentials.username.split_once('\\') {
            // `DOMAIN\user` carries its domain when the Secret has none.
            Some((domain, user)) if credentials.domain.is_empty() => (user, domain),
            _ => (credentials.username.as_str(), credentials.domain.as_str()),
        };
        let key = ntowf_v2(&credentials.password, user, domain);
        let nt = ntlmv2_response(
            &key,
            &challenge.server_challenge,
            client_challenge,
            timestamp,
            &challenge.target_info,
        );
        // With a server timestamp the LMv2 response must be zeros (MS-NLMP 3.1.5.1.2).
        let lm = if challenge.timestamp().is_some() {
            vec![0u8; 24]
        } else {
            lmv2_response(&key, &challenge.server_challenge, client_challenge)
        };
        let fields = [
            lm,
            nt,
            utf16le(domain),
            utf16le(user),
            utf16le("NETREACH"),
            Vec::new(), // no session key exchange
        ];
        const HEADER: usize = 64;
        let mut out = SIGNATURE.to_vec();
        out.extend(3u32.to_le_bytes());
        let mut offset = HEADER;
        for field in &fields {
            let len = field.len() as u16;
            out.extend(len.to_le_bytes());
            out.extend(len.to_le_bytes());
            out.extend((offset as u32).to_le_bytes());
            offset += field.len();
        }
        out.extend((FLAGS & (challenge.flags | NEGOTIATE_UNICODE)).to_le_bytes());
        for field in fields {
            out.extend(field);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(text: &str) -> Vec<u8> {
        let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
            .collect()
    }

    fn credentials(username: &str, password: &str, domain: &str) -> Credentials {
        Credentials {
            username: username.into(),
            password: password.into(),
            domain: domain.into(),
        }
    }

    #[test]
    fn cram_md5_matches_rfc_2195() {
        assert_eq!(
            cram_md5(
                "tim",
                "tanstaaftanstaaf",
                b"<1896.697170952@postoffice.reston.mci.net>"
            ),
            "tim b913a602c7eda7a495b4e6e7334d3890"
        );
    }

    #[test]
    fn apop_matches_rfc_1939() {
        let greeting = "+OK POP3 server ready <1896.697170952@dbc.mtview.ca.us>";
        let stamp = apop_timestamp(greeting).unwrap();
        assert_eq!(stamp, "<1896.697170952@dbc.mtview.ca.us>");
        assert_eq!(apop(stamp, "tanstaaf"), "c4c9334bac560ecc979e58001b3e22fb");
        assert_eq!(apop_timestamp("+OK Dovecot ready."), None);
    }

    #[test]
    fn plain_and_login_answer_in_order() {
        let c = credentials("user@example.com", "secret", "");
        assert_eq!(
            plain("user@example.com", "secret"),
            b"\0user@example.com\0secret"
        );
        let mut login = SaslClient::new(Mechanism::Login, &c);
        assert_eq!(login.respond(b"Username:").unwrap(), b"user@example.com");
        assert_eq!(login.respond(b"Password:").unwrap(), b"secret");
        assert!(login.respond(b"More?").is_err());
        let secrets = login.secrets();
        assert!(secrets.contains(&"secret".to_owned()));
        assert!(secrets.contains(&"c2VjcmV0".to_owned()), "{secrets:?}");
    }

    #[test]
    fn scrub_removes_every_secret_longest_first() {
        let text = "535 AUTH failed for AHVzZXIAc2VjcmV0 (secret)";
        let scrubbed = scrub(text, &["secret".into(), "AHVzZXIAc2VjcmV0".into()]);
        assert_eq!(scrubbed, "535 AUTH failed for *** (***)");
    }

    #[test]
    fn credentials_debug_never_shows_the_password() {
        let shown = format!("{:?}", credentials("u", "hunter2", "D"));
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    // MS-NLMP 4.2.1 common values and 4.2.4 (NTLMv2) results.
    const SERVER_CHALLENGE: [u8; 8] = [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef];
    const CLIENT_CHALLENGE: [u8; 8] = [0xaa; 8];
    /// The CHALLENGE message of MS-NLMP 4.2.4.3.
    const CHALLENGE_MESSAGE: &str = "4e544c4d53535000020000000c000c003800000033828ae20123456789abcdef00000000000000002400240044000000060070170000000f53006500720076006500720002000c0044006f006d00610069006e0001000c0053006500720076006500720000000000";

    #[test]
    fn nt_hash_and_ntowf_v2_match_ms_nlmp() {
        assert_eq!(
            ntlm::nt_hash("Password").to_vec(),
            unhex("a4f49c406510bdcab6824ee7c30fd852")
        );
        assert_eq!(
            ntlm::ntowf_v2("Password", "User", "Domain").to_vec(),
            unhex("0c868a403bfd7a93a3001ef22ef02e3f")
        );
    }

    #[test]
    fn the_ms_nlmp_challenge_parses_and_ntlmv2_responses_match() {
        let challenge = ntlm::Challenge::parse(&unhex(CHALLENGE_MESSAGE)).unwrap();
        assert_eq!(challenge.server_challenge, SERVER_CHALLENGE);
        assert_eq!(challenge.flags, 0xe28a_8233);
        assert_eq!(challenge.target_info.len(), 36);
        assert_eq!(challenge.timestamp(), None);
        let key = ntlm::ntowf_v2("Password", "User", "Domain");
        assert_eq!(
            ntlm::lmv2_response(&key, &SERVER_CHALLENGE, CLIENT_CHALLENGE),
            unhex("86c35097ac9cec102554764a57cccc19aaaaaaaaaaaaaaaa")
        );
        let nt = ntlm::ntlmv2_response(
            &key,
            &SERVER_CHALLENGE,
            CLIENT_CHALLENGE,
            0,
            &challenge.target_info,
        );
        assert_eq!(nt[..16], unhex("68cd0ab851e51c96aabc927bebef6a1c"));
    }

    #[test]
    fn the_authenticate_message_lays_out_its_fields() {
        let challenge = ntlm::Challenge::parse(&unhex(CHALLENGE_MESSAGE)).unwrap();
        let message = ntlm::authenticate(
            &challenge,
            &credentials("User", "Password", "Domain"),
            CLIENT_CHALLENGE,
            0,
        );
        assert_eq!(&message[..12], b"NTLMSSP\0\x03\0\0\0");
        let field = |index: usize| {
            let at = 12 + index * 8;
            let len = u16::from_le_bytes([message[at], message[at + 1]]) as usize;
            let offset = u32::from_le_bytes(message[at + 4..at + 8].try_into().unwrap()) as usize;
            message[offset..offset + len].to_vec()
        };
        assert_eq!(
            field(0),
            unhex("86c35097ac9cec102554764a57cccc19aaaaaaaaaaaaaaaa")
        );
        assert_eq!(field(1)[..16], unhex("68cd0ab851e51c96aabc927bebef6a1c"));
        assert_eq!(
            field(2),
            "Domain"
                .encode_utf16()
                .flat_map(u16::to_le_bytes)
                .collect::<Vec<_>>()
        );
        assert_eq!(
            field(3),
            "User"
                .encode_utf16()
                .flat_map(u16::to_le_bytes)
                .collect::<Vec<_>>()
        );
        // A `DOMAIN\user` name carries the domain when none is set.
        let split = ntlm::authenticate(
            &challenge,
            &credentials("Domain\\User", "Password", ""),
            CLIENT_CHALLENGE,
            0,
        );
        assert_eq!(split, message);
    }

    #[test]
    fn malformed_challenges_are_refused_not_panicked_on() {
        for bad in [
            Vec::new(),
            b"NTLMSSP\0".to_vec(),
            unhex("4e544c4d5353500001000000"),
            unhex(
                "4e544c4d53535000020000000c000c003800000033828ae20123456789abcdef0000000000000000ff00ff00f0000000",
            ),
        ] {
            assert!(ntlm::Challenge::parse(&bad).is_err(), "{bad:?}");
        }
        let creds = credentials("u", "p", "");
        let mut client = SaslClient::new(Mechanism::Ntlm, &creds);
        assert_eq!(client.respond(b"").unwrap(), ntlm::negotiate());
        assert!(client.respond(b"garbage").is_err());
    }
}
