//! RFC 4515 search filters, from the text a profile holds to the BER a SearchRequest carries
//! (RFC 4511 4.5.1.7): and, or, not, equality, substrings, >=, <=, ~=, presence and extensible
//! match (AD's `userAccountControl:1.2.840.113556.1.4.803:=2`).

const AND: u8 = 0xa0;
const OR: u8 = 0xa1;
const NOT: u8 = 0xa2;
const EQUALITY: u8 = 0xa3;
const SUBSTRINGS: u8 = 0xa4;
const GREATER_OR_EQUAL: u8 = 0xa5;
const LESS_OR_EQUAL: u8 = 0xa6;
const PRESENT: u8 = 0x87;
const APPROX: u8 = 0xa8;
const EXTENSIBLE: u8 = 0xa9;
/// Deepest nesting accepted; a filter is text from a profile, not a stack overflow.
const MAX_DEPTH: usize = 32;

/// BER TLV with a definite length.
pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// Encodes a filter such as `(&(objectClass=user)(mail=*))`. Errors say what is wrong where.
pub fn encode(filter: &str) -> Result<Vec<u8>, String> {
    let mut parser = Parser {
        text: filter.as_bytes(),
        at: 0,
    };
    let encoded = parser.filter(0)?;
    if parser.at != parser.text.len() {
        return Err(format!(
            "unexpected text after the filter at position {}",
            parser.at
        ));
    }
    Ok(encoded)
}

struct Parser<'a> {
    text: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn expect(&mut self, byte: u8) -> Result<(), String> {
        if self.peek() == Some(byte) {
            self.at += 1;
            Ok(())
        } else {
            Err(format!(
                "expected {:?} at position {}",
                byte as char, self.at
            ))
        }
    }

    fn filter(&mut self, depth: usize) -> Result<Vec<u8>, String> {
        if depth > MAX_DEPTH {
            return Err(format!("nested deeper than {MAX_DEPTH} levels"));
        }
        self.expect(b'(')?;
        let encoded = match self.peek() {
            Some(b'&') => {
                self.at += 1;
                tlv(AND, &self.list(depth)?)
            }
            Some(b'|') => {
                self.at += 1;
                tlv(OR, &self.list(depth)?)
            }
            Some(b'!') => {
                self.at += 1;
                tlv(NOT, &self.filter(depth + 1)?)
            }
            _ => self.item()?,
        };
        self.expect(b')')?;
        Ok(encoded)
    }

    fn list(&mut self, depth: usize) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        while self.peek() == Some(b'(') {
            out.extend(self.filter(depth + 1)?);
        }
        if out.is_empty() {
            return Err(format!("empty & or | at position {}", self.at));
        }
        Ok(out)
    }

    /// `attr=value`, `attr=*`, `attr=a*b*c`, `attr>=v`, `attr<=v`, `attr~=v`, `attr:rule:=v`.
    fn item(&mut self) -> Result<Vec<u8>, String> {
        let start = self.at;
        let end = start
            + self.text[start..]
                .iter()
                .position(|b| *b == b')')
                .ok_or_else(|| format!("unclosed item at position {start}"))?;
        let item = std::str::from_utf8(&self.text[start..end])
            .map_err(|_| format!("invalid UTF-8 at position {start}"))?;
        self.at = end;
        let eq = item.find('=').ok_or_else(|| format!("no = in {item:?}"))?;
        let (left, value) = (&item[..eq], &item[eq + 1..]);
        let (attr, tag) = match left.as_bytes().last() {
            Some(b'>') => (&left[..left.len() - 1], GREATER_OR_EQUAL),
            Some(b'<') => (&left[..left.len() - 1], LESS_OR_EQUAL),
            Some(b'~') => (&left[..left.len() - 1], APPROX),
            Some(b':') => return extensible(&left[..left.len() - 1], value),
            _ => (left, EQUALITY),
        };
        check_attribute(attr)?;
        if tag != EQUALITY {
            return Ok(assertion(tag, attr, &unescape(value)?));
        }
        if value == "*" {
            return Ok(tlv(PRESENT, attr.as_bytes()));
        }
        if !value.contains('*') {
            return Ok(assertion(EQUALITY, attr, &unescape(value)?));
        }
        let parts: Vec<&str> = value.split('*').collect();
        let mut subs = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            if part.is_empty() {
                continue;
            }
            let tag = match i {
                0 => 0x80,
                i if i == parts.len() - 1 => 0x82,
                _ => 0x81,
            };
            subs.extend(tlv(tag, &unescape(part)?));
        }
        let mut content = tlv(0x04, attr.as_bytes());
        content.extend(tlv(0x30, &subs));
        Ok(tlv(SUBSTRINGS, &content))
    }
}

fn assertion(tag: u8, attr: &str, value: &[u8]) -> Vec<u8> {
    let mut content = tlv(0x04, attr.as_bytes());
    content.extend(tlv(0x04, value));
    tlv(tag, &content)
}

/// `attr[:dn][:rule]` before `:=`.
fn extensible(left: &str, value: &str) -> Result<Vec<u8>, String> {
    let mut parts = left.split(':');
    let attr = parts.next().unwrap_or_default();
    let mut dn = false;
    let mut rule = None;
    for part in parts {
        if part.eq_ignore_ascii_case("dn") {
            dn = true;
        } else if !part.is_empty() {
            rule = Some(part);
        }
    }
    if attr.is_empty() && rule.is_none() {
        return Err(format!(
            "extensible match {left:?} names neither attribute nor rule"
        ));
    }
    let mut content = Vec::new();
    if let Some(rule) = rule {
        content.extend(tlv(0x81, rule.as_bytes()));
    }
    if !attr.is_empty() {
        check_attribute(attr)?;
        content.extend(tlv(0x82, attr.as_bytes()));
    }
    content.extend(tlv(0x83, &unescape(value)?));
    if dn {
        content.extend(tlv(0x84, &[0xff]));
    }
    Ok(tlv(EXTENSIBLE, &content))
}

fn check_attribute(attr: &str) -> Result<(), String> {
    let fine = !attr.is_empty()
        && attr
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b';');
    if fine {
        Ok(())
    } else {
        Err(format!("{attr:?} is not an attribute name"))
    }
}

/// `\2a` escapes (RFC 4515) to bytes.
fn unescape(value: &str) -> Result<Vec<u8>, String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad escape in {value:?}: write \\ as \\5c"))?;
                out.push(hex);
                i += 3;
            }
            b'(' | b'*' => {
                return Err(format!(
                    "unescaped {:?} in {value:?}: write ( as \\28 and * as \\2a",
                    bytes[i] as char
                ));
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_and_equality_encode_as_rfc_4511_says() {
        assert_eq!(
            encode("(objectClass=*)").unwrap(),
            tlv(PRESENT, b"objectClass")
        );
        assert_eq!(
            encode("(cn=J\\2a Doe)").unwrap(),
            assertion(EQUALITY, "cn", b"J* Doe")
        );
    }

    #[test]
    fn and_not_substrings_and_ad_rules_nest() {
        let encoded = encode(
            "(&(objectClass=user)(mail=*@corp*)(!(userAccountControl:1.2.840.113556.1.4.803:=2)))",
        )
        .unwrap();
        assert_eq!(encoded[0], AND);
        let mut subs = tlv(0x81, b"@corp");
        subs = [tlv(0x04, b"mail"), tlv(0x30, &subs)].concat();
        let substring = tlv(SUBSTRINGS, &subs);
        let rule = tlv(
            EXTENSIBLE,
            &[
                tlv(0x81, b"1.2.840.113556.1.4.803"),
                tlv(0x82, b"userAccountControl"),
                tlv(0x83, b"2"),
            ]
            .concat(),
        );
        let expected = tlv(
            AND,
            &[
                assertion(EQUALITY, "objectClass", b"user"),
                substring,
                tlv(NOT, &rule),
            ]
            .concat(),
        );
        assert_eq!(encoded, expected);
        assert_eq!(
            encode("(sn>=D)").unwrap(),
            assertion(GREATER_OR_EQUAL, "sn", b"D")
        );
    }

    #[test]
    fn bad_filters_say_what_is_wrong() {
        for bad in [
            "objectClass=*",
            "(objectClass=*",
            "(&)",
            "(cn=a(b)",
            "(cn=\\zz)",
            "(=x)",
            "(cn=x))",
            &"(!".repeat(40),
        ] {
            assert!(encode(bad).is_err(), "{bad}");
        }
    }
}
