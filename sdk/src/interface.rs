//! The plugin interface itself: the WIT text and its package version, read from the one file both
//! the SDK's and the host's bindings are generated from (`wit/sluicegate.wit` in this crate).

/// The WIT package of the plugin interface, as written in `wit/sluicegate.wit`.
pub const WIT: &str = include_str!("../wit/sluicegate.wit");

/// The package name and version this SDK builds against (`sluicegate:plugin@X.Y.Z`), taken from the
/// `package` line of [`WIT`] when the crate is compiled, so the version is written only there.
pub const WIT_PACKAGE: &str = package_line(WIT);

/// The version part of [`WIT_PACKAGE`] (`X.Y.Z`).
pub const WIT_VERSION: &str = after_at(WIT_PACKAGE);

/// The name after `package ` on the first line that starts with it, without the `;`.
const fn package_line(wit: &str) -> &str {
    let bytes = wit.as_bytes();
    let prefix = b"package ";
    let mut i = 0;
    // At the start of each line, look for `package `.
    while i < bytes.len() {
        if starts_with_at(bytes, i, prefix) {
            let start = i + prefix.len();
            let mut end = start;
            while end < bytes.len() && bytes[end] != b';' && bytes[end] != b'\n' {
                end += 1;
            }
            let (_, rest) = bytes.split_at(start);
            let (name, _) = rest.split_at(end - start);
            return match core::str::from_utf8(name) {
                Ok(name) => name,
                Err(_) => panic!("the WIT package name is not UTF-8"),
            };
        }
        while i < bytes.len() && bytes[i] != b'\n' {
            i += 1;
        }
        i += 1;
    }
    panic!("wit/sluicegate.wit has no `package` line")
}

const fn starts_with_at(bytes: &[u8], at: usize, prefix: &[u8]) -> bool {
    if at + prefix.len() > bytes.len() {
        return false;
    }
    let mut k = 0;
    while k < prefix.len() {
        if bytes[at + k] != prefix[k] {
            return false;
        }
        k += 1;
    }
    true
}

const fn after_at(package: &str) -> &str {
    let bytes = package.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'@' {
            let (_, version) = bytes.split_at(i + 1);
            return match core::str::from_utf8(version) {
                Ok(v) => v,
                Err(_) => panic!("the WIT version is not UTF-8"),
            };
        }
        i += 1;
    }
    panic!("the WIT package has no version")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_is_read_from_the_package_line() {
        assert!(WIT.contains(&format!("\npackage {WIT_PACKAGE};")));
        assert_eq!(WIT_PACKAGE, format!("sluicegate:plugin@{WIT_VERSION}"));
        assert_eq!(package_line("// x\npackage a:b@1.2.3;\n"), "a:b@1.2.3");
        assert_eq!(after_at("a:b@1.2.3"), "1.2.3");
        assert!(
            WIT_VERSION.split('.').all(|n| n.parse::<u32>().is_ok()),
            "{WIT_VERSION}"
        );
    }
}
