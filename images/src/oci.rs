//! OCI image-layout tarballs written from Rust, dependency-free: a ustar writer and reader,
//! SHA-256, and the single-layer layout (`oci-layout`, `index.json`, `blobs/sha256/…`) that
//! `ctr images import` takes. Layers are deterministic (mtime 0, uid/gid 0, entries sorted by
//! path), so the same inputs give the same digests on every build.
//!
//! `build.rs` includes this file with `#[path]`, so it must stay std-only.

use std::fmt::Write as _;
use std::io;

/// `PATH` in every image config.
pub const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Media type of an image manifest.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of an image config.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// Media type of an uncompressed layer.
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
/// Media type of the layout's index.
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";

/// One file-system entry of a layer. Paths are relative (`bin/sh`, no leading `/` or `./`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A directory.
    Dir {
        /// Path without a trailing `/`.
        path: String,
        /// Permission bits (`0o755`, `0o1777`).
        mode: u32,
    },
    /// A regular file.
    File {
        /// Path.
        path: String,
        /// Permission bits.
        mode: u32,
        /// Contents.
        data: Vec<u8>,
    },
    /// A symbolic link.
    Symlink {
        /// Path of the link.
        path: String,
        /// What it points at.
        target: String,
    },
}

impl Entry {
    /// A directory with mode `mode`.
    pub fn dir(path: &str, mode: u32) -> Self {
        Entry::Dir {
            path: path.into(),
            mode,
        }
    }

    /// A regular file.
    pub fn file(path: &str, mode: u32, data: Vec<u8>) -> Self {
        Entry::File {
            path: path.into(),
            mode,
            data,
        }
    }

    /// A symlink `path` → `target`.
    pub fn symlink(path: &str, target: &str) -> Self {
        Entry::Symlink {
            path: path.into(),
            target: target.into(),
        }
    }

    /// The entry's path.
    pub fn path(&self) -> &str {
        match self {
            Entry::Dir { path, .. } | Entry::File { path, .. } | Entry::Symlink { path, .. } => {
                path
            }
        }
    }
}

/// Splits `name` into ustar's `prefix` (≤155) and `name` (≤100) fields.
fn split_name(name: &str) -> io::Result<(&str, &str)> {
    if name.len() <= 100 {
        return Ok(("", name));
    }
    let too_long = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("path too long: {name}"),
        )
    };
    let cut = name.len() - 101; // the last `/` with at most 100 bytes after it
    let slash = name.as_bytes()[cut..]
        .iter()
        .position(|&b| b == b'/')
        .ok_or_else(too_long)?
        + cut;
    let (prefix, rest) = (&name[..slash], &name[slash + 1..]);
    if prefix.len() > 155 || rest.is_empty() {
        return Err(too_long());
    }
    Ok((prefix, rest))
}

fn put(h: &mut [u8; 512], at: usize, len: usize, v: &[u8]) -> io::Result<()> {
    if v.len() > len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("tar field too long: {}", String::from_utf8_lossy(v)),
        ));
    }
    h[at..at + v.len()].copy_from_slice(v);
    Ok(())
}

/// A NUL-terminated octal field of `len` bytes.
fn put_octal(h: &mut [u8; 512], at: usize, len: usize, v: u64) -> io::Result<()> {
    let s = format!("{v:0width$o}", width = len - 1);
    put(h, at, len - 1, s.as_bytes())
}

/// One ustar header (mtime 0, uid/gid 0, owner `root`).
fn header(name: &str, mode: u32, size: u64, kind: u8, link: &str) -> io::Result<[u8; 512]> {
    let mut h = [0u8; 512];
    let (prefix, name) = split_name(name)?;
    put(&mut h, 0, 100, name.as_bytes())?;
    put_octal(&mut h, 100, 8, u64::from(mode))?;
    put_octal(&mut h, 108, 8, 0)?;
    put_octal(&mut h, 116, 8, 0)?;
    put_octal(&mut h, 124, 12, size)?;
    put_octal(&mut h, 136, 12, 0)?;
    h[156] = kind;
    put(&mut h, 157, 100, link.as_bytes())?;
    put(&mut h, 257, 6, b"ustar\0")?;
    put(&mut h, 263, 2, b"00")?;
    put(&mut h, 265, 32, b"root")?;
    put(&mut h, 297, 32, b"root")?;
    put_octal(&mut h, 329, 8, 0)?;
    put_octal(&mut h, 337, 8, 0)?;
    put(&mut h, 345, 155, prefix.as_bytes())?;
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    Ok(h)
}

/// A tar archive of `entries`, sorted by path (a directory precedes what it holds), ending in
/// the two zero blocks.
pub fn tar(entries: &[Entry]) -> io::Result<Vec<u8>> {
    let mut sorted: Vec<&Entry> = entries.iter().collect();
    sorted.sort_by(|a, b| a.path().cmp(b.path()));
    let mut out = Vec::new();
    for e in sorted {
        match e {
            Entry::Dir { path, mode } => {
                out.extend_from_slice(&header(&format!("{path}/"), *mode, 0, b'5', "")?);
            }
            Entry::File { path, mode, data } => {
                out.extend_from_slice(&header(path, *mode, data.len() as u64, b'0', "")?);
                out.extend_from_slice(data);
                out.resize(out.len().next_multiple_of(512), 0);
            }
            Entry::Symlink { path, target } => {
                out.extend_from_slice(&header(path, 0o777, 0, b'2', target)?);
            }
        }
    }
    out.resize(out.len() + 1024, 0);
    Ok(out)
}

/// One member of a tar archive, as [`read_tar`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member<'a> {
    /// Path as stored (directories end in `/`).
    pub path: String,
    /// Type flag (`b'0'` file, `b'2'` symlink, `b'5'` directory, …).
    pub kind: u8,
    /// Permission bits.
    pub mode: u32,
    /// Symlink target (empty for other kinds).
    pub link: String,
    /// Contents (empty for non-files).
    pub data: &'a [u8],
}

fn field_str(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn field_octal(b: &[u8]) -> io::Result<u64> {
    let s = field_str(b);
    let s = s.trim_matches(|c: char| c == ' ' || c == '\0');
    if s.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(s, 8).map_err(|e| bad(format!("octal field {s:?}: {e}")))
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Reads a ustar archive (checksums verified; stops at the first zero block).
pub fn read_tar(bytes: &[u8]) -> io::Result<Vec<Member<'_>>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 512 <= bytes.len() {
        let h = &bytes[at..at + 512];
        if h.iter().all(|&b| b == 0) {
            return Ok(out);
        }
        let want = field_octal(&h[148..156])?;
        let sum: u64 = h
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u64::from(b)
                }
            })
            .sum();
        if sum != want {
            return Err(bad(format!("tar header checksum at {at}")));
        }
        let name = field_str(&h[0..100]);
        let prefix = field_str(&h[345..500]);
        let path = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let size = field_octal(&h[124..136])? as usize;
        let start = at + 512;
        let data = bytes
            .get(start..start + size)
            .ok_or_else(|| bad(format!("tar member {path} truncated")))?;
        out.push(Member {
            path,
            kind: h[156],
            mode: field_octal(&h[100..108])? as u32,
            link: field_str(&h[157..257]),
            data,
        });
        at = start + size.next_multiple_of(512);
    }
    Err(bad("tar archive without its end blocks".into()))
}

const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

fn compress(h: &mut [u32; 8], block: &[u8]) {
    let mut w = [0u32; 64];
    for (i, word) in block.chunks_exact(4).enumerate() {
        w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
    }
    for i in 16..64 {
        let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
        let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16]
            .wrapping_add(s0)
            .wrapping_add(w[i - 7])
            .wrapping_add(s1);
    }
    let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = *h;
    for i in 0..64 {
        let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
        let ch = (e & f) ^ (!e & g);
        let t1 = hh
            .wrapping_add(s1)
            .wrapping_add(ch)
            .wrapping_add(K[i])
            .wrapping_add(w[i]);
        let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
        let maj = (a & b) ^ (a & c) ^ (b & c);
        let t2 = s0.wrapping_add(maj);
        hh = g;
        g = f;
        f = e;
        e = d.wrapping_add(t1);
        d = c;
        c = b;
        b = a;
        a = t1.wrapping_add(t2);
    }
    for (x, v) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
        *x = x.wrapping_add(v);
    }
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let full = data.len() / 64 * 64;
    let mut tail = data[full..].to_vec();
    tail.push(0x80);
    while tail.len() % 64 != 56 {
        tail.push(0);
    }
    tail.extend_from_slice(&(data.len() as u64).wrapping_mul(8).to_be_bytes());
    for block in data[..full].chunks_exact(64).chain(tail.chunks_exact(64)) {
        compress(&mut h, block);
    }
    let mut out = [0u8; 32];
    for (o, v) in out.chunks_exact_mut(4).zip(h) {
        o.copy_from_slice(&v.to_be_bytes());
    }
    out
}

/// `sha256:<hex>` of `data`.
pub fn digest(data: &[u8]) -> String {
    let mut s = String::with_capacity(71);
    s.push_str("sha256:");
    for b in sha256(data) {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// `s` as a JSON string literal.
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_list(items: &[&str]) -> String {
    let items: Vec<String> = items.iter().map(|s| json_str(s)).collect();
    format!("[{}]", items.join(","))
}

/// A descriptor object (`mediaType`, `digest`, `size`).
fn descriptor(media_type: &str, blob: &[u8]) -> String {
    format!(
        r#"{{"mediaType":{},"digest":{},"size":{}}}"#,
        json_str(media_type),
        json_str(&digest(blob)),
        blob.len()
    )
}

/// An OCI image-layout tar holding one amd64/linux image named `name` (a full reference,
/// `docker.io/library/x:tag`), whose single uncompressed layer holds `layer`, and whose config
/// has `entrypoint` (left out when empty), `cmd` (likewise) and [`PATH_ENV`]. As in docker's
/// own images, `kubectl run … -- ARGS` replaces `cmd` and `--command` replaces `entrypoint`.
pub fn layout(
    name: &str,
    entrypoint: &[&str],
    cmd: &[&str],
    layer: &[Entry],
) -> io::Result<Vec<u8>> {
    let layer = tar(layer)?;
    let mut process = String::new();
    if !entrypoint.is_empty() {
        process.push_str(&format!(r#""Entrypoint":{},"#, json_list(entrypoint)));
    }
    if !cmd.is_empty() {
        process.push_str(&format!(r#""Cmd":{},"#, json_list(cmd)));
    }
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{{process}"Env":{}}},"rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
        json_list(&[PATH_ENV]),
        json_str(&digest(&layer)),
    )
    .into_bytes();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":{},"config":{},"layers":[{}]}}"#,
        json_str(MANIFEST_MEDIA_TYPE),
        descriptor(CONFIG_MEDIA_TYPE, &config),
        descriptor(LAYER_MEDIA_TYPE, &layer),
    )
    .into_bytes();
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":{},"manifests":[{{"mediaType":{},"digest":{},"size":{},"platform":{{"architecture":"amd64","os":"linux"}},"annotations":{{"io.containerd.image.name":{},"org.opencontainers.image.ref.name":{}}}}}]}}"#,
        json_str(INDEX_MEDIA_TYPE),
        json_str(MANIFEST_MEDIA_TYPE),
        json_str(&digest(&manifest)),
        manifest.len(),
        json_str(name),
        json_str(name),
    )
    .into_bytes();
    let blob = |data: &[u8]| {
        let d = digest(data);
        Entry::file(&format!("blobs/sha256/{}", &d[7..]), 0o644, data.to_vec())
    };
    tar(&[
        Entry::file(
            "oci-layout",
            0o644,
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        Entry::file("index.json", 0o644, index),
        Entry::dir("blobs", 0o755),
        Entry::dir("blobs/sha256", 0o755),
        blob(&layer),
        blob(&config),
        blob(&manifest),
    ])
}

/// Whether `elf` is an ELF executable that needs no program interpreter (static or static-pie),
/// i.e. runs in an image holding nothing else.
pub fn elf_is_static(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        return false; // not a little-endian ELF64
    }
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap_or([0; 8])) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).all(|i| {
        let at = phoff + i * phentsize;
        elf.get(at..at + 4)
            .is_some_and(|t| u32::from_le_bytes([t[0], t[1], t[2], t[3]]) != PT_INTERP)
    })
}
