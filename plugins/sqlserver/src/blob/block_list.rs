//! Block lists: the XML body of Put Block List, and the answer of Get Block
//! List (Microsoft's "Put Block List" and "Get Block List" pages).
//!
//! SQL Server sends its block list in UTF-16 with a byte order mark; other
//! clients send UTF-8. Both are read.

use quick_xml::Reader;
use quick_xml::events::Event;

use super::azure::{AzureError, BlockId};
use http::StatusCode;

/// 400 `InvalidXmlDocument` with `detail`.
fn invalid_xml(detail: impl std::fmt::Display) -> AzureError {
    AzureError::new(
        StatusCode::BAD_REQUEST,
        "InvalidXmlDocument",
        format!("XML specified is not syntactically valid: {detail}."),
    )
}

/// The body as text: UTF-16 (little or big endian, by its byte order mark,
/// or little endian when the first character has a zero high byte) or UTF-8.
fn decode(body: &[u8]) -> Result<String, AzureError> {
    let utf16 = |bytes: &[u8], little: bool| {
        if !bytes.len().is_multiple_of(2) {
            return Err(invalid_xml("UTF-16 text of an odd number of bytes"));
        }
        let units = bytes.chunks_exact(2).map(|pair| {
            let pair = [pair[0], pair[1]];
            if little {
                u16::from_le_bytes(pair)
            } else {
                u16::from_be_bytes(pair)
            }
        });
        char::decode_utf16(units)
            .collect::<Result<String, _>>()
            .map_err(|e| invalid_xml(format!("bad UTF-16: {e}")))
    };
    match body {
        [0xFF, 0xFE, rest @ ..] => utf16(rest, true),
        [0xFE, 0xFF, rest @ ..] => utf16(rest, false),
        [b'<', 0, ..] => utf16(body, true),
        [0, b'<', ..] => utf16(body, false),
        [0xEF, 0xBB, 0xBF, rest @ ..] => {
            String::from_utf8(rest.to_vec()).map_err(|e| invalid_xml(format!("bad UTF-8: {e}")))
        }
        _ => String::from_utf8(body.to_vec()).map_err(|e| invalid_xml(format!("bad UTF-8: {e}"))),
    }
}

/// The block ids of a Put Block List body, in list order:
/// `<BlockList><Latest|Committed|Uncommitted>id</...>...</BlockList>`.
/// Which of the three names an entry uses does not matter here: a stripe is
/// committed once, so every block it names was put in this job.
///
/// # Errors
/// 400 `InvalidXmlDocument` for a body that is not such a document, 400
/// `InvalidBlockList` for an entry that is not a block id.
pub fn parse(body: &[u8]) -> Result<Vec<BlockId>, AzureError> {
    let text = decode(body)?;
    let mut reader = Reader::from_str(&text);
    reader.config_mut().trim_text(true);
    let mut ids = Vec::new();
    let mut depth = 0usize;
    let mut seen_root = false;
    // The entry being read, and its text so far.
    let mut entry: Option<String> = None;
    loop {
        let event = reader.read_event().map_err(invalid_xml)?;
        match event {
            Event::Start(start) => {
                let name = start.local_name();
                let name = std::str::from_utf8(name.as_ref()).map_err(invalid_xml)?;
                match (depth, name) {
                    (0, "BlockList") if !seen_root => seen_root = true,
                    (1, "Latest" | "Committed" | "Uncommitted") => entry = Some(String::new()),
                    _ => return Err(invalid_xml(format!("unexpected element <{name}>"))),
                }
                depth += 1;
            }
            Event::Empty(start) => {
                let name = start.local_name();
                let name = String::from_utf8_lossy(name.as_ref()).into_owned();
                match (depth, name.as_str()) {
                    (0, "BlockList") if !seen_root => seen_root = true,
                    (1, _) => return Err(invalid_list(format!("<{name}/> names no block"))),
                    _ => return Err(invalid_xml(format!("unexpected element <{name}/>"))),
                }
            }
            Event::Text(text) if entry.is_some() => {
                let text = text.decode().map_err(invalid_xml)?;
                if let Some(entry) = entry.as_mut() {
                    entry.push_str(&text);
                }
            }
            Event::End(_) => {
                depth -= 1;
                if depth == 1
                    && let Some(text) = entry.take()
                {
                    let id = BlockId::parse(text.trim())
                        .map_err(|e| invalid_list(format!("block id {text:?}: {}", e.message)))?;
                    ids.push(id);
                }
            }
            Event::Text(text) => {
                if !text.decode().map_err(invalid_xml)?.trim().is_empty() {
                    return Err(invalid_xml("text outside a block entry"));
                }
            }
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) => {}
            Event::Eof => break,
            Event::CData(_) | Event::DocType(_) | Event::GeneralRef(_) => {
                return Err(invalid_xml(
                    "a block list holds elements and base64 text only",
                ));
            }
        }
    }
    if !seen_root || depth != 0 {
        return Err(invalid_xml("expected one <BlockList> element"));
    }
    Ok(ids)
}

/// 400 `InvalidBlockList` with `detail`.
pub fn invalid_list(detail: impl std::fmt::Display) -> AzureError {
    AzureError::new(
        StatusCode::BAD_REQUEST,
        "InvalidBlockList",
        format!("The specified block list is invalid: {detail}."),
    )
}

/// The answer of Get Block List: the committed blocks and the uncommitted
/// ones (ids and sizes in bytes), each included when asked for (`None`
/// leaves the element out).
pub fn render(
    committed: Option<&[(BlockId, u64)]>,
    uncommitted: Option<&[(BlockId, u64)]>,
) -> String {
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList>");
    for (element, blocks) in [
        ("CommittedBlocks", committed),
        ("UncommittedBlocks", uncommitted),
    ] {
        let Some(blocks) = blocks else { continue };
        xml.push_str(&format!("<{element}>"));
        for (id, size) in blocks {
            // Block ids are base64 (checked on the way in): nothing to escape.
            xml.push_str(&format!(
                "<Block><Name>{id}</Name><Size>{size}</Size></Block>"
            ));
        }
        xml.push_str(&format!("</{element}>"));
    }
    xml.push_str("</BlockList>");
    xml
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = "<?xml version=\"1.0\" encoding=\"utf-16\"?>\r\n<BlockList>\r\n  <Latest>AAAA</Latest>\r\n  <Uncommitted>AAAB</Uncommitted>\r\n<Committed>AAAC</Committed></BlockList>";

    fn ids(list: &[BlockId]) -> Vec<&str> {
        list.iter().map(|id| id.0.as_str()).collect()
    }

    #[test]
    fn utf16_with_a_bom_as_sql_server_sends_it_and_utf8_read_alike() {
        let mut le = vec![0xFF, 0xFE];
        le.extend(LIST.encode_utf16().flat_map(u16::to_le_bytes));
        let mut be = vec![0xFE, 0xFF];
        be.extend(LIST.encode_utf16().flat_map(u16::to_be_bytes));
        let mut utf8_bom = vec![0xEF, 0xBB, 0xBF];
        utf8_bom.extend(LIST.as_bytes());
        for body in [le, be, utf8_bom, LIST.as_bytes().to_vec()] {
            assert_eq!(ids(&parse(&body).unwrap()), ["AAAA", "AAAB", "AAAC"]);
        }
    }

    #[test]
    fn malformed_lists_are_refused_with_azures_codes() {
        assert_eq!(
            parse(b"<BlockList><Latest>AAAA</BlockList>")
                .unwrap_err()
                .code,
            "InvalidXmlDocument"
        );
        assert_eq!(parse(b"<Other/>").unwrap_err().code, "InvalidXmlDocument");
        assert_eq!(
            parse(b"<BlockList><Latest/></BlockList>").unwrap_err().code,
            "InvalidBlockList"
        );
        assert_eq!(
            parse(b"<BlockList><Block>AAAA</Block></BlockList>")
                .unwrap_err()
                .code,
            "InvalidXmlDocument"
        );
        assert_eq!(
            parse(b"<BlockList><Latest>no base64!</Latest></BlockList>")
                .unwrap_err()
                .code,
            "InvalidBlockList"
        );
        assert_eq!(parse(b"").unwrap_err().code, "InvalidXmlDocument");
        assert!(parse(b"<BlockList/>").unwrap().is_empty());
    }

    #[test]
    fn a_rendered_list_names_ids_and_sizes() {
        let blocks = [(BlockId("AAAA".into()), 4194304)];
        let xml = render(Some(&blocks), None);
        assert!(xml.contains("<CommittedBlocks><Block><Name>AAAA</Name><Size>4194304</Size></Block></CommittedBlocks>"), "{xml}");
        assert!(!xml.contains("UncommittedBlocks"));
    }
}
