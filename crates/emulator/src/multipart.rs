//! A small `multipart/form-data` parser (RFC 7578) for the Attachment
//! Upload API: the boundary from the content type, then parts with a
//! `Content-Disposition: form-data; name=…` header, an optional `filename`
//! and an optional `Content-Type`. It borrows the part bodies from the
//! request body, so a 25 MB file is never copied.

/// One part of a `multipart/form-data` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Part<'a> {
    pub name: String,
    pub filename: Option<String>,
    pub content_type: Option<String>,
    pub data: &'a [u8],
}

/// The `boundary` parameter of a `multipart/form-data` content type, or
/// `None` when the content type is something else.
pub(crate) fn boundary(content_type: &str) -> Option<Result<String, String>> {
    let mut params = content_type.split(';');
    let mime = params.next()?.trim();
    if !mime.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    let found = params.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| unquote(v.trim()))
    });
    Some(match found {
        Some(b) if !b.is_empty() && b.len() <= 70 => Ok(b),
        _ => Err("multipart/form-data without a valid boundary".to_string()),
    })
}

fn unquote(v: &str) -> String {
    match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => inner.replace("\\\"", "\"").replace("\\\\", "\\"),
        None => v.to_string(),
    }
}

/// The first index of `needle` in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let mut from = 0;
    while from + needle.len() <= hay.len() {
        let i = from
            + hay[from..=hay.len() - needle.len()]
                .iter()
                .position(|&b| b == first)?;
        if &hay[i + 1..i + needle.len()] == rest {
            return Some(i);
        }
        from = i + 1;
    }
    None
}

/// Splits `body` into its parts. Text before the first boundary (the
/// preamble) and after the last (the epilogue) is ignored.
pub(crate) fn parse<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<Part<'a>>, String> {
    let dash = format!("--{boundary}");
    let delim = format!("\r\n--{boundary}");
    let mut pos = if body.starts_with(dash.as_bytes()) {
        0
    } else {
        find(body, delim.as_bytes()).ok_or("the multipart boundary never occurs")? + 2
    };
    let mut parts = Vec::new();
    loop {
        pos += dash.len();
        let rest = &body[pos..];
        if rest.starts_with(b"--") {
            return Ok(parts);
        }
        let eol = find(rest, b"\r\n").ok_or("the multipart body is truncated")?;
        if !rest[..eol].iter().all(|b| *b == b' ' || *b == b'\t') {
            return Err("malformed multipart boundary line".into());
        }
        pos += eol + 2;
        let (headers, start) = if body[pos..].starts_with(b"\r\n") {
            ("", pos + 2)
        } else {
            let end = find(&body[pos..], b"\r\n\r\n").ok_or("a multipart part has no body")?;
            let h = std::str::from_utf8(&body[pos..pos + end])
                .map_err(|_| "multipart headers are not UTF-8")?;
            (h, pos + end + 4)
        };
        let end = start
            + find(&body[start..], delim.as_bytes()).ok_or("the multipart body is not closed")?;
        parts.push(part(headers, &body[start..end])?);
        pos = end + 2;
    }
}

fn part<'a>(headers: &str, data: &'a [u8]) -> Result<Part<'a>, String> {
    let mut name = None;
    let mut filename = None;
    let mut content_type = None;
    for line in headers.split("\r\n") {
        let Some((key, value)) = line.split_once(':') else {
            return Err(format!("malformed multipart header: {line}"));
        };
        let key = key.trim();
        if key.eq_ignore_ascii_case("content-type") {
            content_type = Some(value.trim().to_string());
        } else if key.eq_ignore_ascii_case("content-disposition") {
            let mut params = value.split(';');
            let kind = params.next().unwrap_or("").trim();
            if !kind.eq_ignore_ascii_case("form-data") {
                return Err(format!("multipart part is {kind}, not form-data"));
            }
            for p in params {
                if let Some((k, v)) = p.split_once('=') {
                    match k.trim().to_ascii_lowercase().as_str() {
                        "name" => name = Some(unquote(v.trim())),
                        "filename" => filename = Some(unquote(v.trim())),
                        _ => {}
                    }
                }
            }
        }
    }
    let name = name.ok_or("a multipart part has no Content-Disposition name")?;
    Ok(Part {
        name,
        filename,
        content_type,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundary_is_read_quoted_or_not() {
        assert_eq!(
            boundary("multipart/form-data; boundary=abc"),
            Some(Ok("abc".into()))
        );
        assert_eq!(
            boundary("Multipart/Form-Data; charset=utf-8; BOUNDARY=\"a b\""),
            Some(Ok("a b".into()))
        );
        assert!(matches!(boundary("multipart/form-data"), Some(Err(_))));
        assert_eq!(boundary("application/json"), None);
    }

    #[test]
    fn parts_are_split_with_names_files_and_binary_bodies() {
        let body = b"preamble\r\n--XyZ\r\nContent-Disposition: form-data; name=\"message\"\r\n\r\n{\"a\":1}\r\n--XyZ\r\nContent-Disposition: form-data; name=\"filedata\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n\x89PNG\r\n--X\r\n\x00\r\n--XyZ--\r\nepilogue";
        let parts = parse(body, "XyZ").unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].name, "message");
        assert_eq!(parts[0].data, b"{\"a\":1}");
        assert_eq!(parts[0].filename, None);
        assert_eq!(parts[1].name, "filedata");
        assert_eq!(parts[1].filename.as_deref(), Some("a.png"));
        assert_eq!(parts[1].content_type.as_deref(), Some("image/png"));
        assert_eq!(parts[1].data, b"\x89PNG\r\n--X\r\n\x00");
    }

    #[test]
    fn broken_bodies_are_refused() {
        assert!(parse(b"no boundary here", "b").is_err());
        assert!(parse(
            b"--b\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\nunclosed",
            "b"
        )
        .is_err());
        assert!(parse(b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n--b--", "b").is_err());
        assert_eq!(parse(b"--b--\r\n", "b").unwrap(), Vec::new());
    }
}
