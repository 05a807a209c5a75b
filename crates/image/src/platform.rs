//! Platforms (`os/arch[/variant]`): parsing, normalising, the host default, and picking the best
//! manifest of an index for a platform.
//!
//! The rules are containerd's (`platforms.Parse`, `Normalize`, `Only`), which BuildKit and Docker
//! use: names are lowercased, `x86_64`/`x86-64` → `amd64`, `aarch64` → `arm64`, `armhf` →
//! `arm/v7`, `armel` → `arm/v6`, `i386` → `386`, `arm` without a variant means `arm/v7`, and
//! `arm64/v8` is the same platform as plain `arm64` (parsing keeps a written `v8`, normalising
//! drops it, and matching compares normalised forms).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An image platform. Serialises in the OCI shape (`{"os": …, "architecture": …, "variant": …}`);
/// the string form (`linux/arm/v7`) comes from [`FromStr`] and [`fmt::Display`].
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlatformError {
    #[error(
        "invalid platform {0:?}: expected os/arch[/variant], e.g. linux/amd64 or linux/arm64/v8"
    )]
    Format(String),
    #[error(
        "invalid platform {specifier:?}: {component:?} is not a valid component (letters, digits, '_' and '-' only)"
    )]
    Component {
        specifier: String,
        component: String,
    },
    #[error("invalid platform {0:?}: unknown operating system or architecture")]
    Unknown(String),
}

impl Platform {
    /// A normalised platform from its parts (an empty variant counts as none).
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: os.to_string(),
            architecture: architecture.to_string(),
            variant: variant.filter(|v| !v.is_empty()).map(str::to_string),
        }
        .normalize()
    }

    /// `linux/amd64`.
    pub fn linux_amd64() -> Platform {
        Platform::new("linux", "amd64", None)
    }

    /// The platform this program runs on, in image terms (Rust's `x86_64` is `amd64`, …).
    pub fn host() -> Platform {
        let os = match std::env::consts::OS {
            "macos" => "darwin",
            other => other,
        };
        let little = cfg!(target_endian = "little");
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "x86" => "386",
            "aarch64" => "arm64",
            "powerpc64" if little => "ppc64le",
            "powerpc64" => "ppc64",
            "powerpc" => "ppc",
            "mips" if little => "mipsle",
            "mips64" if little => "mips64le",
            "loongarch64" => "loong64",
            other => other,
        };
        Platform::new(os, architecture, None)
    }

    /// Parses a platform specifier as `docker build --platform` does: `os/arch[/variant]`, or a
    /// lone OS (the host architecture) or architecture (OS `linux`).
    ///
    /// # Errors
    /// [`PlatformError`] for an empty specifier, more than three parts, characters other than
    /// letters, digits, `_` and `-`, or a lone word that is neither a known OS nor architecture.
    pub fn parse(specifier: &str) -> Result<Platform, PlatformError> {
        let parts: Vec<&str> = specifier.split('/').collect();
        if specifier.is_empty() || parts.len() > 3 {
            return Err(PlatformError::Format(specifier.to_string()));
        }
        if let Some(bad) = parts.iter().find(|part| {
            part.is_empty()
                || !part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        }) {
            return Err(PlatformError::Component {
                specifier: specifier.to_string(),
                component: bad.to_string(),
            });
        }
        match parts.as_slice() {
            [word] => {
                let word = word.to_ascii_lowercase();
                let os = normalize_os(&word);
                if is_known_os(&os) {
                    return Ok(Platform {
                        os,
                        ..Platform::host()
                    });
                }
                let (architecture, variant) = normalize_arch(&word, "");
                if is_known_arch(&architecture) {
                    return Ok(Platform {
                        os: "linux".to_string(),
                        architecture,
                        variant,
                    });
                }
                Err(PlatformError::Unknown(specifier.to_string()))
            }
            [os, arch] => Ok(Platform::new(os, arch, None)),
            [os, arch, variant] => {
                let mut platform = Platform::new(os, arch, Some(variant));
                // Written explicitly, arm64/v8 stays as written (containerd does the same); it
                // still matches plain arm64.
                if platform.architecture == "arm64" && platform.variant.is_none() {
                    platform.variant = Some("v8".to_string());
                }
                Ok(platform)
            }
            _ => Err(PlatformError::Format(specifier.to_string())),
        }
    }

    /// containerd's `Normalize`: lowercase, canonical architecture names and variants.
    pub fn normalize(&self) -> Platform {
        let (architecture, variant) =
            normalize_arch(&self.architecture, self.variant.as_deref().unwrap_or(""));
        Platform {
            os: normalize_os(&self.os),
            architecture,
            variant,
        }
    }

    /// Whether `candidate` (e.g. from an index) is this platform: equal after normalising, so
    /// `linux/arm64/v8` matches `linux/arm64` and `linux/arm` matches `linux/arm/v7`.
    pub fn matches(&self, candidate: &Platform) -> bool {
        self.normalize() == candidate.normalize()
    }

    /// The platforms that can run on this one, best first (containerd's `Only`): the platform
    /// itself, then older variants of its architecture (`arm/v7` runs `arm/v6` and `arm/v5`;
    /// `arm64` runs `arm/v8` … `arm/v5`; `amd64/v3` runs `amd64/v2` and `amd64`), then `386`
    /// on `amd64`.
    pub fn compatible(&self) -> Vec<Platform> {
        let own = self.normalize();
        let with = |architecture: &str, variant: Option<String>| Platform {
            os: own.os.clone(),
            architecture: architecture.to_string(),
            variant,
        };
        let mut out = vec![own.clone()];
        let level = |variant: &Option<String>| -> Option<u32> {
            variant.as_deref()?.strip_prefix('v')?.parse().ok()
        };
        match own.architecture.as_str() {
            "arm" => {
                if let Some(level) = level(&own.variant) {
                    out.extend((5..level).rev().map(|v| with("arm", Some(format!("v{v}")))));
                }
            }
            "arm64" if own.variant.is_none() => {
                out.extend((5..=8).rev().map(|v| with("arm", Some(format!("v{v}")))));
            }
            "amd64" => {
                if let Some(level) = level(&own.variant) {
                    out.extend(
                        (2..level)
                            .rev()
                            .map(|v| with("amd64", Some(format!("v{v}")))),
                    );
                    out.push(with("amd64", None));
                }
                out.push(with("386", None));
            }
            _ => {}
        }
        out
    }

    /// The index of the best candidate for this platform (first in [`Platform::compatible`]
    /// order; among equals the earliest in `candidates`), or `None` when none can run here.
    pub fn best_match<'a, I>(&self, candidates: I) -> Option<usize>
    where
        I: IntoIterator<Item = &'a Platform>,
    {
        let preferences = self.compatible();
        candidates
            .into_iter()
            .enumerate()
            .filter_map(|(index, candidate)| {
                let candidate = candidate.normalize();
                preferences
                    .iter()
                    .position(|preferred| *preferred == candidate)
                    .map(|rank| (rank, index))
            })
            .min()
            .map(|(_, index)| index)
    }

    /// The OCI spec's platform type, for descriptors.
    pub fn to_oci(&self) -> oci_spec::image::Platform {
        let mut platform = oci_spec::image::Platform::default();
        platform.set_os(oci_spec::image::Os::from(self.os.as_str()));
        platform.set_architecture(oci_spec::image::Arch::from(self.architecture.as_str()));
        platform.set_variant(self.variant.clone());
        platform
    }
}

impl From<&oci_spec::image::Platform> for Platform {
    fn from(platform: &oci_spec::image::Platform) -> Platform {
        Platform {
            os: platform.os().to_string(),
            architecture: platform.architecture().to_string(),
            variant: platform.variant().clone().filter(|v| !v.is_empty()),
        }
    }
}

fn normalize_os(os: &str) -> String {
    match os.to_ascii_lowercase().as_str() {
        "macos" => "darwin".to_string(),
        other => other.to_string(),
    }
}

fn normalize_arch(architecture: &str, variant: &str) -> (String, Option<String>) {
    let architecture = architecture.to_ascii_lowercase();
    let variant = variant.to_ascii_lowercase();
    let (architecture, variant): (&str, &str) = match architecture.as_str() {
        "i386" => ("386", ""),
        "x86_64" | "x86-64" | "amd64" => ("amd64", if variant == "v1" { "" } else { &variant }),
        "aarch64" | "arm64" => (
            "arm64",
            if variant == "8" || variant == "v8" {
                ""
            } else {
                &variant
            },
        ),
        "armhf" => ("arm", "v7"),
        "armel" => ("arm", "v6"),
        "arm" => match variant.as_str() {
            "" | "7" => ("arm", "v7"),
            "5" => ("arm", "v5"),
            "6" => ("arm", "v6"),
            "8" => ("arm", "v8"),
            _ => ("arm", &variant),
        },
        other => (other, &variant),
    };
    let variant = (!variant.is_empty()).then(|| variant.to_string());
    (architecture.to_string(), variant)
}

fn is_known_os(os: &str) -> bool {
    matches!(
        os,
        "aix"
            | "android"
            | "darwin"
            | "dragonfly"
            | "freebsd"
            | "hurd"
            | "illumos"
            | "ios"
            | "js"
            | "linux"
            | "nacl"
            | "netbsd"
            | "openbsd"
            | "plan9"
            | "solaris"
            | "wasip1"
            | "windows"
            | "zos"
    )
}

fn is_known_arch(architecture: &str) -> bool {
    matches!(
        architecture,
        "386"
            | "amd64"
            | "amd64p32"
            | "arm"
            | "armbe"
            | "arm64"
            | "arm64be"
            | "loong64"
            | "mips"
            | "mipsle"
            | "mips64"
            | "mips64le"
            | "mips64p32"
            | "mips64p32le"
            | "ppc"
            | "ppc64"
            | "ppc64le"
            | "riscv"
            | "riscv64"
            | "s390"
            | "s390x"
            | "sparc"
            | "sparc64"
            | "wasm"
    )
}

impl fmt::Display for Platform {
    /// `os/arch[/variant]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Platform({self})")
    }
}

impl FromStr for Platform {
    type Err = PlatformError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Platform::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Platform {
        Platform::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    #[test]
    fn parse_and_display() {
        let cases = [
            ("linux/amd64", "linux/amd64"),
            ("linux/x86_64", "linux/amd64"),
            ("linux/x86-64", "linux/amd64"),
            ("Linux/AMD64", "linux/amd64"),
            ("linux/amd64/v1", "linux/amd64"),
            ("linux/amd64/v3", "linux/amd64/v3"),
            ("linux/aarch64", "linux/arm64"),
            ("linux/arm64", "linux/arm64"),
            ("linux/arm64/v8", "linux/arm64/v8"),
            ("linux/aarch64/8", "linux/arm64/v8"),
            ("linux/arm64/v9", "linux/arm64/v9"),
            ("linux/armhf", "linux/arm/v7"),
            ("linux/armel", "linux/arm/v6"),
            ("linux/arm", "linux/arm/v7"),
            ("linux/arm/7", "linux/arm/v7"),
            ("linux/arm/6", "linux/arm/v6"),
            ("linux/arm/v5", "linux/arm/v5"),
            ("linux/i386", "linux/386"),
            ("linux/ppc64le", "linux/ppc64le"),
            ("linux/s390x", "linux/s390x"),
            ("linux/riscv64", "linux/riscv64"),
            ("macos/arm64", "darwin/arm64"),
            ("windows/amd64", "windows/amd64"),
            ("arm64", "linux/arm64"),
            ("aarch64", "linux/arm64"),
            ("armhf", "linux/arm/v7"),
        ];
        for (input, expected) in cases {
            assert_eq!(p(input).to_string(), expected, "{input}");
        }
        let linux = p("linux");
        assert_eq!(linux.os, "linux");
        assert_eq!(linux.architecture, Platform::host().architecture);
    }

    #[test]
    fn parse_errors() {
        for bad in [
            "",
            "linux/",
            "/amd64",
            "linux/amd64/v8/x",
            "linux/amd 64",
            "linux/amd64(x)",
            "plan10",
        ] {
            assert!(Platform::parse(bad).is_err(), "{bad:?}");
        }
        let err = Platform::parse("nonsense").unwrap_err();
        assert!(
            err.to_string()
                .contains("unknown operating system or architecture"),
            "{err}"
        );
    }

    #[test]
    fn normalize_drops_arm64_v8_and_matching_ignores_it() {
        assert_eq!(p("linux/arm64/v8").normalize(), p("linux/arm64"));
        assert!(p("linux/arm64/v8").matches(&p("linux/arm64")));
        assert!(p("linux/arm64").matches(&Platform::new("linux", "arm64", Some("v8"))));
        assert!(p("linux/arm").matches(&Platform::new("linux", "arm", Some("v7"))));
        assert!(!p("linux/arm/v6").matches(&p("linux/arm/v7")));
        assert!(!p("linux/amd64").matches(&p("linux/arm64")));
        assert!(!p("linux/amd64").matches(&p("windows/amd64")));
        assert!(p("linux/amd64").matches(&Platform {
            os: "Linux".into(),
            architecture: "x86_64".into(),
            variant: None
        }));
    }

    #[test]
    fn host_is_normalised() {
        let host = Platform::host();
        assert_eq!(host, host.normalize());
        assert!(!host.architecture.is_empty() && !host.os.is_empty());
        if cfg!(all(target_os = "linux", target_arch = "x86_64")) {
            assert_eq!(host.to_string(), "linux/amd64");
        }
    }

    #[test]
    fn best_match_prefers_exact_then_compatible() {
        let index = [
            p("linux/arm/v6"),
            p("linux/arm64/v8"),
            p("linux/amd64"),
            p("linux/arm/v7"),
        ];
        assert_eq!(p("linux/arm64").best_match(&index), Some(1));
        assert_eq!(p("linux/arm64/v8").best_match(&index), Some(1));
        assert_eq!(p("linux/amd64").best_match(&index), Some(2));
        assert_eq!(p("linux/arm/v7").best_match(&index), Some(3));
        assert_eq!(p("linux/arm").best_match(&index), Some(3));
        assert_eq!(p("linux/arm/v6").best_match(&index), Some(0));
        assert_eq!(p("linux/s390x").best_match(&index), None);
        assert_eq!(p("windows/amd64").best_match(&index), None);
        // An arm64 host runs arm/v7 images when there is no arm64 one; arm/v7 is preferred to v6.
        let arm_only = [p("linux/arm/v6"), p("linux/arm/v7")];
        assert_eq!(p("linux/arm64").best_match(&arm_only), Some(1));
        // amd64/v3 prefers v2 to plain amd64, and amd64 runs 386.
        let amd = [p("linux/386"), p("linux/amd64"), p("linux/amd64/v2")];
        assert_eq!(p("linux/amd64/v3").best_match(&amd), Some(2));
        assert_eq!(p("linux/amd64").best_match(&amd[..1]), Some(0));
        // Equal candidates: the first wins.
        let twice = [p("linux/amd64"), p("linux/amd64")];
        assert_eq!(p("linux/amd64").best_match(&twice), Some(0));
    }

    #[test]
    fn serde_uses_the_oci_shape() {
        let platform = p("linux/arm/v7");
        let json = serde_json::to_string(&platform).unwrap();
        assert_eq!(
            json,
            r#"{"os":"linux","architecture":"arm","variant":"v7"}"#
        );
        assert_eq!(serde_json::from_str::<Platform>(&json).unwrap(), platform);
        let json = serde_json::to_string(&p("linux/amd64")).unwrap();
        assert_eq!(json, r#"{"os":"linux","architecture":"amd64"}"#);
        let back: Platform =
            serde_json::from_str(r#"{"architecture":"amd64","os":"linux"}"#).unwrap();
        assert_eq!(back, p("linux/amd64"));
    }

    #[test]
    fn oci_round_trip() {
        for text in [
            "linux/amd64",
            "linux/arm/v7",
            "linux/arm64/v8",
            "linux/riscv64",
        ] {
            let platform = p(text);
            assert_eq!(Platform::from(&platform.to_oci()), platform, "{text}");
        }
    }
}
