//! IKE reachability of an IPsec VPN peer over UDP: one IKEv2 IKE_SA_INIT (or IKEv1 Main Mode
//! first message), and the parse of whatever answers for our SPI. No keys are derived and no
//! SA is established; parsing is bounded and never panics on garbage.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use ring::rand::{SecureRandom, SystemRandom};

use super::aggregate::Session;
use super::net::{Deadline, Failure};
use super::plan::Target;
use crate::api::endpoint::IKE_PORT;
use crate::api::result::{Latency, Outcome, Reason, Stage};

/// Time between retransmissions of the request (UDP may drop it).
const RETRANSMIT: Duration = Duration::from_secs(1);
/// Largest datagram read.
const MAX_DATAGRAM: usize = 65_535;

// IKEv2 (RFC 7296) payload types, exchange, notify and transform numbers.
const V2_SA: u8 = 33;
const V2_KE: u8 = 34;
const V2_NONCE: u8 = 40;
const V2_NOTIFY: u8 = 41;
const IKE_SA_INIT: u8 = 34;
const FLAG_INITIATOR: u8 = 0x08;
const FLAG_RESPONSE: u8 = 0x20;
const NOTIFY_NO_PROPOSAL_CHOSEN: u16 = 14;
const NOTIFY_INVALID_KE_PAYLOAD: u16 = 17;
const NOTIFY_COOKIE: u16 = 16390;
const ENCR: u8 = 1;
const PRF: u8 = 2;
const INTEG: u8 = 3;
const DH: u8 = 4;
const ENCR_AES_CBC: u16 = 12;
const ENCR_AES_GCM_16: u16 = 20;
const KEY_LENGTH: u16 = 14;
/// The groups offered, in order of preference; the KE payload is for the first.
const GROUPS: [u16; 3] = [19, 31, 14];

// IKEv1 (RFC 2408/2409).
const V1_SA: u8 = 1;
const V1_NOTIFY: u8 = 11;
const MAIN_MODE: u8 = 2;

/// Who answered and what it said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The responder chose a proposal (transform names).
    Chose(Vec<String>),
    /// The responder answered with a notify (its name and data).
    Notify { kind: u16, data: Vec<u8> },
    /// A well-formed response with neither (e.g. IKEv1 without an SA).
    Other,
}

/// A random initiator SPI.
fn spi(random: &SystemRandom) -> [u8; 8] {
    let mut spi = [0u8; 8];
    // A failing system RNG leaves a constant SPI: still a valid probe.
    let _ = random.fill(&mut spi);
    if spi == [0; 8] {
        spi[7] = 1;
    }
    spi
}

fn payload(next: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![next, 0];
    out.extend_from_slice(&((body.len() + 4) as u16).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn transform(last: bool, kind: u8, id: u16, key_length: Option<u16>) -> Vec<u8> {
    let mut body = vec![kind, 0];
    body.extend_from_slice(&id.to_be_bytes());
    if let Some(bits) = key_length {
        body.extend_from_slice(&(0x8000 | KEY_LENGTH).to_be_bytes());
        body.extend_from_slice(&bits.to_be_bytes());
    }
    let mut out = vec![if last { 0 } else { 3 }, 0];
    out.extend_from_slice(&((body.len() + 4) as u16).to_be_bytes());
    out.extend(body);
    out
}

fn proposal(last: bool, number: u8, transforms: &[(u8, u16, Option<u16>)]) -> Vec<u8> {
    let mut body = vec![number, 1, 0, transforms.len() as u8];
    for (i, (kind, id, bits)) in transforms.iter().enumerate() {
        body.extend(transform(i + 1 == transforms.len(), *kind, *id, *bits));
    }
    let mut out = vec![if last { 0 } else { 2 }, 0];
    out.extend_from_slice(&((body.len() + 4) as u16).to_be_bytes());
    out.extend(body);
    out
}

/// Common proposals: AES-CBC with SHA-2 integrity, and AES-GCM; PRF SHA-2; groups 19, 31, 14.
fn v2_proposals() -> Vec<u8> {
    let groups = GROUPS.iter().map(|g| (DH, *g, None));
    let prfs = [5u16, 6, 7].map(|id| (PRF, id, None));
    let mut cbc: Vec<(u8, u16, Option<u16>)> = vec![
        (ENCR, ENCR_AES_CBC, Some(256)),
        (ENCR, ENCR_AES_CBC, Some(128)),
    ];
    cbc.extend(prfs);
    cbc.extend([12u16, 13, 14].map(|id| (INTEG, id, None)));
    cbc.extend(groups.clone());
    let mut gcm: Vec<(u8, u16, Option<u16>)> = vec![
        (ENCR, ENCR_AES_GCM_16, Some(256)),
        (ENCR, ENCR_AES_GCM_16, Some(128)),
    ];
    gcm.extend(prfs);
    gcm.extend(groups);
    let mut out = proposal(false, 1, &cbc);
    out.extend(proposal(true, 2, &gcm));
    out
}

/// A public key of the right shape for `group` (no secret is kept: nothing is derived).
fn key_exchange_data(group: u16, random: &SystemRandom) -> Option<Vec<u8>> {
    use ring::agreement::{ECDH_P256, EphemeralPrivateKey, X25519};
    match group {
        19 => {
            let key = EphemeralPrivateKey::generate(&ECDH_P256, random).ok()?;
            // Uncompressed point 04 || x || y; IKE carries x || y.
            Some(key.compute_public_key().ok()?.as_ref().get(1..)?.to_vec())
        }
        31 => {
            let key = EphemeralPrivateKey::generate(&X25519, random).ok()?;
            Some(key.compute_public_key().ok()?.as_ref().to_vec())
        }
        14 => {
            // Any value in 2..p-2 is a valid MODP public value; a clear top bit keeps it below p.
            let mut value = vec![0u8; 256];
            random.fill(&mut value).ok()?;
            value[0] &= 0x7f;
            value[255] |= 1;
            Some(value)
        }
        _ => None,
    }
}

/// An IKEv2 IKE_SA_INIT request with a KE payload for `group`, and a cookie when the
/// responder asked for one.
pub fn ike_sa_init(
    spi_i: [u8; 8],
    group: u16,
    cookie: Option<&[u8]>,
    random: &SystemRandom,
) -> Option<Vec<u8>> {
    let ke_data = key_exchange_data(group, random)?;
    let mut nonce = [0u8; 32];
    random.fill(&mut nonce).ok()?;
    let mut ke = group.to_be_bytes().to_vec();
    ke.extend_from_slice(&[0, 0]);
    ke.extend(ke_data);
    let mut body = Vec::new();
    if let Some(cookie) = cookie {
        let mut notify = vec![0, 0];
        notify.extend_from_slice(&NOTIFY_COOKIE.to_be_bytes());
        notify.extend_from_slice(cookie);
        body.extend(payload(V2_SA, &notify));
    }
    body.extend(payload(V2_KE, &v2_proposals()));
    body.extend(payload(V2_NONCE, &ke));
    body.extend(payload(0, &nonce));
    let first = if cookie.is_some() { V2_NOTIFY } else { V2_SA };
    Some(header(
        spi_i,
        first,
        0x20,
        IKE_SA_INIT,
        FLAG_INITIATOR,
        &body,
    ))
}

/// An IKEv1 Main Mode first message: one SA with common PSK transforms.
pub fn main_mode(cookie_i: [u8; 8]) -> Vec<u8> {
    // (encryption, key length, hash, group): AES-256/SHA2-256/modp2048, AES-128/SHA1/modp2048,
    // AES-256/SHA1/modp1024, 3DES/SHA1/modp1024.
    let offers: [(u16, Option<u16>, u16, u16); 4] = [
        (7, Some(256), 4, 14),
        (7, Some(128), 2, 14),
        (7, Some(256), 2, 2),
        (5, None, 2, 2),
    ];
    let mut transforms = Vec::new();
    for (i, (encryption, bits, hash, group)) in offers.iter().enumerate() {
        let mut attributes = Vec::new();
        let mut tv = |kind: u16, value: u16| {
            attributes.extend_from_slice(&(0x8000 | kind).to_be_bytes());
            attributes.extend_from_slice(&value.to_be_bytes());
        };
        tv(1, *encryption);
        if let Some(bits) = bits {
            tv(14, *bits);
        }
        tv(2, *hash);
        tv(3, 1); // pre-shared key
        tv(4, *group);
        tv(11, 1); // life type: seconds
        tv(12, 28_800);
        let mut body = vec![(i + 1) as u8, 1, 0, 0]; // transform number, KEY_IKE
        body.extend(attributes);
        let last = i + 1 == offers.len();
        transforms.extend(payload(if last { 0 } else { 3 }, &body));
    }
    let mut proposal = vec![1, 1, 0, offers.len() as u8]; // number, PROTO_ISAKMP, SPI size
    proposal.extend(transforms);
    let mut sa = 1u32.to_be_bytes().to_vec(); // DOI: IPsec
    sa.extend_from_slice(&1u32.to_be_bytes()); // SIT_IDENTITY_ONLY
    sa.extend(payload(0, &proposal));
    header(cookie_i, V1_SA, 0x10, MAIN_MODE, 0, &payload(0, &sa))
}

fn header(spi_i: [u8; 8], next: u8, version: u8, exchange: u8, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut out = spi_i.to_vec();
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&[next, version, exchange, flags]);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&((28 + body.len()) as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// The payloads of a message as (type, body), walking the chain from `first`; None when a
/// length is out of bounds.
fn payloads(mut first: u8, mut bytes: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let mut out = Vec::new();
    while first != 0 {
        let next = *bytes.first()?;
        let length = u16::from_be_bytes([*bytes.get(2)?, *bytes.get(3)?]) as usize;
        if length < 4 || out.len() > 64 {
            return None;
        }
        out.push((first, bytes.get(4..length)?));
        bytes = &bytes[length..];
        first = next;
    }
    Some(out)
}

fn transform_name(kind: u8, id: u16, bits: Option<u16>) -> String {
    let bits = bits.map(|b| format!("-{b}")).unwrap_or_default();
    match (kind, id) {
        (ENCR, ENCR_AES_CBC) => format!("AES_CBC{bits}"),
        (ENCR, ENCR_AES_GCM_16) => format!("AES_GCM_16{bits}"),
        (PRF, 5) => "PRF_HMAC_SHA2_256".into(),
        (PRF, 6) => "PRF_HMAC_SHA2_384".into(),
        (PRF, 7) => "PRF_HMAC_SHA2_512".into(),
        (INTEG, 12) => "HMAC_SHA2_256_128".into(),
        (INTEG, 13) => "HMAC_SHA2_384_192".into(),
        (INTEG, 14) => "HMAC_SHA2_512_256".into(),
        (DH, 14) => "MODP_2048".into(),
        (DH, 19) => "ECP_256".into(),
        (DH, 31) => "CURVE_25519".into(),
        (kind, id) => format!("transform {kind}/{id}{bits}"),
    }
}

/// The transforms of the first proposal of an IKEv2 SA payload.
fn v2_chosen(sa: &[u8]) -> Option<Vec<String>> {
    let length = u16::from_be_bytes([*sa.get(2)?, *sa.get(3)?]) as usize;
    let proposal = sa.get(..length)?;
    let spi_size = *proposal.get(6)? as usize;
    let count = *proposal.get(7)? as usize;
    let mut rest = proposal.get(8 + spi_size..)?;
    let mut names = Vec::new();
    for _ in 0..count.min(32) {
        let length = u16::from_be_bytes([*rest.get(2)?, *rest.get(3)?]) as usize;
        let transform = rest.get(..length).filter(|_| length >= 8)?;
        let kind = transform[4];
        let id = u16::from_be_bytes([transform[6], transform[7]]);
        let bits = match transform.get(8..12) {
            Some([0x80, 0x0e, high, low]) => Some(u16::from_be_bytes([*high, *low])),
            _ => None,
        };
        names.push(transform_name(kind, id, bits));
        rest = &rest[length..];
    }
    Some(names)
}

/// Strips the NAT-T non-ESP marker (four zero bytes) when present.
fn strip_marker(datagram: &[u8]) -> &[u8] {
    match datagram {
        [0, 0, 0, 0, rest @ ..] => rest,
        other => other,
    }
}

/// Parses a response to our request: None when it is not a well-formed IKE response for
/// `spi_i` (another peer's packet, garbage, a truncated message).
pub fn parse_response(datagram: &[u8], spi_i: [u8; 8], version: u8) -> Option<Answer> {
    let message = strip_marker(datagram);
    if message.len() < 28 || message[..8] != spi_i {
        return None;
    }
    let length = u32::from_be_bytes([message[24], message[25], message[26], message[27]]) as usize;
    let message = message.get(..length).filter(|_| length >= 28)?;
    let next = message[16];
    let major = message[17] >> 4;
    let exchange = message[18];
    let flags = message[19];
    let body = &message[28..];
    if version == 2 {
        if major != 2 || flags & FLAG_RESPONSE == 0 || flags & FLAG_INITIATOR != 0 {
            return None;
        }
        if exchange != IKE_SA_INIT {
            return None;
        }
        let payloads = payloads(next, body)?;
        if let Some((_, notify)) = payloads.iter().find(|(kind, body)| {
            *kind == V2_NOTIFY
                && body
                    .get(2..4)
                    .is_some_and(|t| u16::from_be_bytes([t[0], t[1]]) < 16384)
        }) {
            return notify_of(notify, 0);
        }
        if let Some((_, notify)) = payloads.iter().find(|(kind, body)| {
            *kind == V2_NOTIFY && body.get(2..4) == Some(&NOTIFY_COOKIE.to_be_bytes()[..])
        }) {
            return notify_of(notify, 0);
        }
        return match payloads.iter().find(|(kind, _)| *kind == V2_SA) {
            Some((_, sa)) => Some(Answer::Chose(v2_chosen(sa)?)),
            None => Some(Answer::Other),
        };
    }
    if major != 1 {
        return None;
    }
    let payloads = payloads(next, body)?;
    if let Some((_, notify)) = payloads.iter().find(|(kind, _)| *kind == V1_NOTIFY) {
        // DOI (4 bytes) before the IKEv2-shaped protocol, SPI size and type.
        return notify_of(notify, 4);
    }
    match payloads.iter().find(|(kind, _)| *kind == V1_SA) {
        Some((_, sa)) => Some(Answer::Chose(v1_chosen(sa).unwrap_or_default())),
        None => Some(Answer::Other),
    }
}

fn notify_of(body: &[u8], skip: usize) -> Option<Answer> {
    let body = body.get(skip..)?;
    let spi_size = *body.get(1)? as usize;
    let kind = u16::from_be_bytes([*body.get(2)?, *body.get(3)?]);
    let data = body
        .get(4 + spi_size..)?
        .iter()
        .take(256)
        .copied()
        .collect();
    Some(Answer::Notify { kind, data })
}

/// The attributes of the transform an IKEv1 responder chose.
fn v1_chosen(sa: &[u8]) -> Option<Vec<String>> {
    let proposal = payloads(2, sa.get(8..)?)?.first()?.1;
    let spi_size = *proposal.get(2)? as usize;
    let transform = payloads(3, proposal.get(4 + spi_size..)?)?.first()?.1;
    let mut attributes = transform.get(4..)?;
    let mut names = Vec::new();
    while attributes.len() >= 4 && names.len() < 16 {
        let kind = u16::from_be_bytes([attributes[0], attributes[1]]);
        let value = u16::from_be_bytes([attributes[2], attributes[3]]);
        if kind & 0x8000 == 0 {
            break; // a variable-length attribute: the basic ones say enough
        }
        let name = match (kind & 0x7fff, value) {
            (1, 5) => Some("3DES_CBC".to_owned()),
            (1, 7) => Some("AES_CBC".to_owned()),
            (14, bits) => Some(format!("key length {bits}")),
            (2, 2) => Some("SHA1".to_owned()),
            (2, 4) => Some("SHA2_256".to_owned()),
            (4, 2) => Some("MODP_1024".to_owned()),
            (4, 14) => Some("MODP_2048".to_owned()),
            _ => None,
        };
        names.extend(name);
        attributes = &attributes[4..];
    }
    Some(names)
}

fn notify_name(kind: u16) -> String {
    match kind {
        NOTIFY_NO_PROPOSAL_CHOSEN => "NO_PROPOSAL_CHOSEN".into(),
        NOTIFY_INVALID_KE_PAYLOAD => "INVALID_KE_PAYLOAD".into(),
        NOTIFY_COOKIE => "COOKIE".into(),
        7 => "INVALID_SYNTAX".into(),
        24 => "AUTHENTICATION_FAILED".into(),
        other => format!("notify {other}"),
    }
}

/// The IKE exchange with one address; the row passes on any well-formed answer.
pub(super) async fn session(
    address: IpAddr,
    target: &Target,
    deadline: &Deadline,
    mut latency: Latency,
) -> Session {
    let started = Instant::now();
    let outcome = exchange(address, target, deadline).await;
    latency.protocol_ms = Some(started.elapsed().as_millis() as u64);
    match outcome {
        Ok(detail) => Session {
            outcome: Outcome::Pass,
            stage: Stage::Protocol,
            reason: Reason::Reachable,
            message: format!(
                "{} reachable over IKE (UDP): {detail}",
                shown_udp(target, address)
            ),
            intercepted: false,
            tls: None,
            detail: Some(detail),
            latency,
            blocked_by: None,
            source_ip: None,
        },
        Err(failure) => Session::failed(failure, latency, None),
    }
}

/// `UDP 500 to 18.233.3.236`, with the host name in front when the address came from DNS.
fn shown_udp(target: &Target, address: IpAddr) -> String {
    let port = target.port;
    match target.host.as_deref() {
        Some(host) if host.parse::<IpAddr>().is_err() => {
            format!("{host}: UDP {port} to {address}")
        }
        _ => format!("UDP {port} to {address}"),
    }
}

/// Sends the request (retransmitting every second) until an answer for our SPI arrives, a
/// retry is asked for, or the deadline passes.
async fn exchange(
    address: IpAddr,
    target: &Target,
    deadline: &Deadline,
) -> Result<String, Failure> {
    let port = target.port;
    let peer = SocketAddr::new(address, port);
    let shown = shown_udp(target, address);
    let version = if target.ike.as_ref().and_then(|i| i.version) == Some(1) {
        1u8
    } else {
        2u8
    };
    let random = SystemRandom::new();
    let spi_i = spi(&random);
    let local: SocketAddr = if address.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal address")
    } else {
        "[::]:0".parse().expect("literal address")
    };
    let io_failure = |e: std::io::Error| {
        Failure::new(
            Stage::Connect,
            Reason::ConnectError,
            format!("cannot send IKE to {shown}: {e}; check this machine's network"),
        )
    };
    let socket = tokio::net::UdpSocket::bind(local)
        .await
        .map_err(io_failure)?;
    socket.connect(peer).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::NetworkUnreachable => Failure::new(
            Stage::Connect,
            Reason::NetworkUnreachable,
            format!("the network of {address} is unreachable from here ({shown})"),
        ),
        _ => io_failure(e),
    })?;
    let mut group = GROUPS[0];
    let mut cookie: Option<Vec<u8>> = None;
    let mut retries = 0;
    let mut chosen_note = Vec::new();
    loop {
        let request = if version == 2 {
            ike_sa_init(spi_i, group, cookie.as_deref(), &random).ok_or_else(|| {
                Failure::new(
                    Stage::Protocol,
                    Reason::ProtocolError,
                    format!("cannot build the IKE_SA_INIT for {shown} (group {group})"),
                )
            })?
        } else {
            main_mode(spi_i)
        };
        let mut datagram = Vec::with_capacity(request.len() + 4);
        // Like strongSwan: the non-ESP marker on every port but 500, so responders on custom
        // ports answer.
        if port != IKE_PORT {
            datagram.extend_from_slice(&[0; 4]);
        }
        datagram.extend(request);
        let answer = send_and_wait(&socket, &datagram, spi_i, version, &shown, deadline).await?;
        match answer {
            Answer::Notify { kind, data } if kind == NOTIFY_INVALID_KE_PAYLOAD && retries == 0 => {
                let wanted = data
                    .get(..2)
                    .map(|g| u16::from_be_bytes([g[0], g[1]]))
                    .filter(|g| GROUPS.contains(g));
                match wanted {
                    Some(wanted) => {
                        chosen_note.push(format!(
                            "asked for group {} (INVALID_KE_PAYLOAD)",
                            transform_name(DH, wanted, None)
                        ));
                        group = wanted;
                        retries += 1;
                    }
                    None => {
                        return Ok(format!(
                            "IKEv2 responder answered INVALID_KE_PAYLOAD asking for a group not offered ({}); the VPN endpoint is reachable, its group differs from the common ones",
                            data.get(..2)
                                .map(|g| u16::from_be_bytes([g[0], g[1]]).to_string())
                                .unwrap_or_else(|| "?".into())
                        ));
                    }
                }
            }
            Answer::Notify { kind, data } if kind == NOTIFY_COOKIE && cookie.is_none() => {
                chosen_note.push("sent a COOKIE".to_owned());
                cookie = Some(data.into_iter().take(64).collect());
            }
            answer => {
                let what = describe(&answer, version);
                chosen_note.push(what);
                return Ok(chosen_note.join(", then "));
            }
        }
    }
}

fn describe(answer: &Answer, version: u8) -> String {
    let who = if version == 2 {
        "IKEv2 responder"
    } else {
        "IKEv1 responder (Main Mode)"
    };
    match answer {
        Answer::Chose(names) if names.is_empty() => format!("{who} accepted a proposal"),
        Answer::Chose(names) => format!("{who} chose {}", names.join("/")),
        Answer::Notify { kind, .. } if *kind == NOTIFY_NO_PROPOSAL_CHOSEN => format!(
            "{who} answered NO_PROPOSAL_CHOSEN: the VPN endpoint is reachable, but accepts none of the common proposals (the tunnel's own proposal may still match)"
        ),
        Answer::Notify { kind, .. } => format!("{who} answered {}", notify_name(*kind)),
        Answer::Other => format!("{who} answered"),
    }
}

/// One request, retransmitted, until a matching answer or the deadline.
async fn send_and_wait(
    socket: &tokio::net::UdpSocket,
    datagram: &[u8],
    spi_i: [u8; 8],
    version: u8,
    shown: &str,
    deadline: &Deadline,
) -> Result<Answer, Failure> {
    let refused = || {
        Failure::new(
            Stage::Connect,
            Reason::ConnectionRefused,
            format!(
                "{shown} refused (ICMP port unreachable): nothing listens for IKE there; check the VPN peer's address and port"
            ),
        )
    };
    let wait = async {
        let mut buffer = vec![0u8; MAX_DATAGRAM];
        loop {
            match socket.send(datagram).await {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    return Err(refused());
                }
                Err(e) => {
                    return Err(Failure::new(
                        Stage::Connect,
                        Reason::ConnectError,
                        format!("sending IKE to {shown} failed: {e}"),
                    ));
                }
            }
            let resend = tokio::time::sleep(RETRANSMIT);
            tokio::pin!(resend);
            loop {
                tokio::select! {
                    _ = &mut resend => break,
                    received = socket.recv(&mut buffer) => match received {
                        Ok(n) => {
                            if let Some(answer) = parse_response(&buffer[..n], spi_i, version) {
                                return Ok(answer);
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                            return Err(refused());
                        }
                        Err(e) => {
                            return Err(Failure::new(
                                Stage::Connect,
                                Reason::ConnectError,
                                format!("receiving from {shown} failed: {e}"),
                            ));
                        }
                    },
                }
            }
        }
    };
    deadline
        .run(
            Stage::Connect,
            Reason::NoAnswer,
            || {
                format!(
                    "{shown} unanswered: a firewall may drop IKE, or the peer is not configured for this source address"
                )
            },
            wait,
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(spi_i: [u8; 8], next: u8, body: &[u8]) -> Vec<u8> {
        let mut message = header(spi_i, next, 0x20, IKE_SA_INIT, FLAG_RESPONSE, body);
        message[8..16].copy_from_slice(&[9; 8]);
        message
    }

    #[test]
    fn the_request_is_a_well_formed_ike_sa_init() {
        let random = SystemRandom::new();
        let spi_i = [1, 2, 3, 4, 5, 6, 7, 8];
        for group in GROUPS {
            let request = ike_sa_init(spi_i, group, None, &random).unwrap();
            assert_eq!(
                u32::from_be_bytes(request[24..28].try_into().unwrap()) as usize,
                request.len()
            );
            let chain = payloads(request[16], &request[28..]).unwrap();
            let kinds: Vec<u8> = chain.iter().map(|(k, _)| *k).collect();
            assert_eq!(kinds, [V2_SA, V2_KE, V2_NONCE]);
            let ke = chain[1].1;
            assert_eq!(u16::from_be_bytes([ke[0], ke[1]]), group);
            let expected = match group {
                19 => 64,
                31 => 32,
                _ => 256,
            };
            assert_eq!(ke.len() - 4, expected, "group {group}");
            // The offered proposal parses back to its transforms.
            let names = v2_chosen(chain[0].1).unwrap();
            assert!(names.contains(&"AES_CBC-256".to_owned()), "{names:?}");
            assert!(names.contains(&"CURVE_25519".to_owned()), "{names:?}");
        }
        let with_cookie = ike_sa_init(spi_i, 19, Some(b"cookie"), &random).unwrap();
        let chain = payloads(with_cookie[16], &with_cookie[28..]).unwrap();
        assert_eq!(chain[0].0, V2_NOTIFY);
        assert_eq!(&chain[0].1[4..], b"cookie");
    }

    #[test]
    fn responses_are_recognised_by_spi_and_notify() {
        let spi_i = [7; 8];
        let mut notify = vec![0, 0];
        notify.extend_from_slice(&NOTIFY_INVALID_KE_PAYLOAD.to_be_bytes());
        notify.extend_from_slice(&14u16.to_be_bytes());
        let message = response(spi_i, V2_NOTIFY, &payload(0, &notify));
        assert_eq!(
            parse_response(&message, spi_i, 2),
            Some(Answer::Notify {
                kind: NOTIFY_INVALID_KE_PAYLOAD,
                data: vec![0, 14]
            })
        );
        // With the NAT-T marker in front.
        let mut marked = vec![0; 4];
        marked.extend(&message);
        assert!(parse_response(&marked, spi_i, 2).is_some());
        // Someone else's SPI, or our own request echoed back, is not an answer.
        assert_eq!(parse_response(&message, [8; 8], 2), None);
        let random = SystemRandom::new();
        let request = ike_sa_init(spi_i, 19, None, &random).unwrap();
        assert_eq!(parse_response(&request, spi_i, 2), None);
        // An SA answer names the chosen transforms.
        let sa = proposal(
            true,
            1,
            &[
                (ENCR, ENCR_AES_GCM_16, Some(128)),
                (PRF, 5, None),
                (DH, 31, None),
            ],
        );
        let chose = response(spi_i, V2_SA, &payload(0, &sa));
        assert_eq!(
            parse_response(&chose, spi_i, 2),
            Some(Answer::Chose(vec![
                "AES_GCM_16-128".into(),
                "PRF_HMAC_SHA2_256".into(),
                "CURVE_25519".into()
            ]))
        );
    }

    #[test]
    fn garbage_and_truncated_datagrams_never_panic() {
        let spi_i = [3; 8];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let random = SystemRandom::new();
        let good = ike_sa_init(spi_i, 14, None, &random).unwrap();
        for round in 0..2000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut datagram = good.clone();
            datagram[16] = V2_SA;
            datagram[19] = FLAG_RESPONSE;
            let cut = (seed as usize) % (datagram.len() + 1);
            datagram.truncate(cut);
            if let Some(byte) = datagram.get_mut((seed >> 20) as usize % (cut.max(1))) {
                *byte = (seed >> 40) as u8;
            }
            let _ = parse_response(&datagram, spi_i, 2);
            let _ = parse_response(&datagram, spi_i, 1);
            let noise: Vec<u8> = (0..(round % 64))
                .map(|i| (seed >> (i % 56)) as u8)
                .collect();
            let _ = parse_response(&noise, spi_i, 2);
        }
    }

    #[test]
    fn main_mode_is_a_well_formed_isakmp_message() {
        let message = main_mode([5; 8]);
        assert_eq!(message[17], 0x10);
        assert_eq!(message[18], MAIN_MODE);
        assert_eq!(
            u32::from_be_bytes(message[24..28].try_into().unwrap()) as usize,
            message.len()
        );
        let chain = payloads(message[16], &message[28..]).unwrap();
        assert_eq!(chain.len(), 1);
        assert_eq!(chain[0].0, V1_SA);
        // A responder echoing our SA with one transform is read back.
        let mut reply = message.clone();
        reply[8..16].copy_from_slice(&[6; 8]);
        assert_eq!(
            parse_response(&reply, [5; 8], 1),
            Some(Answer::Chose(vec![
                "AES_CBC".into(),
                "key length 256".into(),
                "SHA2_256".into(),
                "MODP_2048".into()
            ]))
        );
    }
}
