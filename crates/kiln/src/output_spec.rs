//! `--output` values of `kiln build`, parsed the way `docker buildx build --output` reads them:
//! `type=oci,dest=x.tar`, `type=docker,dest=x.tar`, `type=local,dest=dir`, `type=tar,dest=x.tar`,
//! `type=image,name=ref[,push=true]`, or a bare path as shorthand for `type=local,dest=PATH`
//! (`-` for a tar on stdout). Also `--annotation` values, as buildx reads them:
//! `[TYPE[,TYPE…][\[PLATFORM\]]:]KEY=VALUE`.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// Layer compression requested for an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip { level: Option<u32> },
    Zstd { level: Option<i32> },
    Uncompressed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputKind {
    /// OCI image layout in a tar.
    Oci { dest: Destination },
    /// What `docker save` writes (loads with `docker load`).
    Docker { dest: Destination },
    /// The root filesystem, as a directory.
    Local { dest: PathBuf },
    /// The root filesystem, as a tar.
    Tar { dest: Destination },
    /// An image in kiln's store under `names`, optionally pushed.
    Image { names: Vec<String>, push: bool },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    File(PathBuf),
    Stdout,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputSpec {
    pub kind: OutputKind,
    pub compression: Compression,
    /// `oci-mediatypes=true|false`: for `type=docker` and `type=image`, which media types manifests use.
    pub oci_media_types: Option<bool>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OutputSpecError {
    #[error("invalid --output {spec:?}: {reason}")]
    Invalid { spec: String, reason: String },
    #[error("invalid --annotation {value:?}: {reason}")]
    InvalidAnnotation { value: String, reason: String },
}

/// Where an `--annotation` goes: buildx's type prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnnotationTarget {
    /// The image manifest's `annotations` (also what a value without a prefix means).
    Manifest,
    /// An image index's `annotations`.
    Index,
    /// The `annotations` of the manifest's descriptor in an index.
    ManifestDescriptor,
    /// The `annotations` of the index's descriptor in an OCI layout's `index.json`.
    IndexDescriptor,
}

impl AnnotationTarget {
    fn parse(name: &str) -> Option<AnnotationTarget> {
        match name {
            "manifest" => Some(AnnotationTarget::Manifest),
            "index" => Some(AnnotationTarget::Index),
            "manifest-descriptor" => Some(AnnotationTarget::ManifestDescriptor),
            "index-descriptor" => Some(AnnotationTarget::IndexDescriptor),
            _ => None,
        }
    }
}

/// One `--annotation` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotation {
    /// The value as given, for error messages.
    pub text: String,
    pub targets: Vec<AnnotationTarget>,
    /// The platform in `TYPE[PLATFORM]:`, as written: the annotation is for that platform's
    /// manifest only.
    pub platform: Option<String>,
    pub key: String,
    pub value: String,
}

impl Annotation {
    /// Parses `[TYPES[PLATFORM]:]KEY=VALUE` (TYPES comma-separated). A prefix is only read as
    /// types when it looks like one (lower-case letters, `-` and `,`), as buildx does, so a key
    /// such as `com.example:x` stays a key.
    ///
    /// # Errors
    /// [`OutputSpecError::InvalidAnnotation`]: no `=`, an empty key, an unknown type, an empty or
    /// unclosed platform.
    pub fn parse(text: &str) -> Result<Annotation, OutputSpecError> {
        let invalid = |reason: String| OutputSpecError::InvalidAnnotation {
            value: text.to_string(),
            reason,
        };
        let (head, value) = text
            .split_once('=')
            .ok_or_else(|| invalid("expected KEY=VALUE".into()))?;
        let mut targets = vec![AnnotationTarget::Manifest];
        let mut platform = None;
        let mut key = head;
        if let Some((prefix, rest)) = head.split_once(':') {
            let (types, platform_part) = match prefix.split_once('[') {
                Some((types, bracketed)) => match bracketed.strip_suffix(']') {
                    Some(inner) => (types, Some(inner)),
                    None => return Err(invalid(format!("unclosed platform in {prefix:?}"))),
                },
                None => (prefix, None),
            };
            let looks_like_types = !types.is_empty()
                && types
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '-' || c == ',');
            if looks_like_types {
                targets = types
                    .split(',')
                    .map(|name| {
                        AnnotationTarget::parse(name).ok_or_else(|| {
                            invalid(format!(
                                "unknown annotation type {name:?} (expected manifest, index, \
                                 manifest-descriptor or index-descriptor)"
                            ))
                        })
                    })
                    .collect::<Result<_, _>>()?;
                if let Some(inner) = platform_part {
                    if inner.trim().is_empty() {
                        return Err(invalid("empty platform in [...]".into()));
                    }
                    platform = Some(inner.trim().to_string());
                }
                key = rest;
            }
        }
        if key.is_empty() {
            return Err(invalid("the key is empty".into()));
        }
        Ok(Annotation {
            text: text.to_string(),
            targets,
            platform,
            key: key.to_string(),
            value: value.to_string(),
        })
    }
}

/// The manifest annotations of `annotations` for a build of one platform: `applies(platform)`
/// says whether a `[PLATFORM]` names the platform being built (others are skipped, as BuildKit
/// skips them for platforms it does not build).
///
/// # Errors
/// [`OutputSpecError::InvalidAnnotation`] for an `index` type (a one-platform build writes a single
/// manifest and no image index; BuildKit refuses them for single-platform exports too) and for the
/// descriptor types, which kiln does not write.
pub fn manifest_annotations(
    annotations: &[Annotation],
    mut applies: impl FnMut(&str) -> bool,
) -> Result<BTreeMap<String, String>, OutputSpecError> {
    let mut manifest = BTreeMap::new();
    for annotation in annotations {
        let invalid = |reason: &str| OutputSpecError::InvalidAnnotation {
            value: annotation.text.clone(),
            reason: reason.to_string(),
        };
        for target in &annotation.targets {
            match target {
                AnnotationTarget::Manifest => {}
                AnnotationTarget::Index => {
                    return Err(invalid(
                        "index annotations need an image index, and a single-platform build \
                         writes none (as in BuildKit); use manifest annotations",
                    ));
                }
                AnnotationTarget::ManifestDescriptor | AnnotationTarget::IndexDescriptor => {
                    return Err(invalid(
                        "kiln does not write manifest-descriptor or index-descriptor \
                         annotations; use manifest annotations",
                    ));
                }
            }
        }
        if annotation.platform.as_deref().is_none_or(&mut applies) {
            manifest.insert(annotation.key.clone(), annotation.value.clone());
        }
    }
    Ok(manifest)
}

impl OutputSpec {
    /// Parses one `--output` value.
    ///
    /// # Errors
    /// [`OutputSpecError::Invalid`] naming the value and what is wrong: an unknown type or key, a
    /// missing `dest`, a bad compression level.
    pub fn parse(spec: &str) -> Result<OutputSpec, OutputSpecError> {
        let invalid = |reason: String| OutputSpecError::Invalid {
            spec: spec.to_string(),
            reason,
        };
        if spec.is_empty() {
            return Err(invalid("empty value".into()));
        }
        if !spec.contains('=') {
            // The shorthand: a path (or `-` for stdout).
            let kind = if spec == "-" {
                OutputKind::Tar {
                    dest: Destination::Stdout,
                }
            } else {
                OutputKind::Local {
                    dest: PathBuf::from(spec),
                }
            };
            return Ok(OutputSpec {
                kind,
                compression: Compression::Gzip { level: None },
                oci_media_types: None,
            });
        }

        let mut kind_name: Option<String> = None;
        let mut dest: Option<String> = None;
        let mut names: Vec<String> = Vec::new();
        let mut push = false;
        let mut compression_name: Option<String> = None;
        let mut compression_level: Option<String> = None;
        let mut oci_media_types = None;
        for field in split_csv(spec) {
            let (key, value) = field
                .split_once('=')
                .ok_or_else(|| invalid(format!("{field:?} is not key=value")))?;
            let key = key.trim().to_ascii_lowercase();
            let value = value.trim().to_string();
            match key.as_str() {
                "type" => kind_name = Some(value.to_ascii_lowercase()),
                "dest" => dest = Some(value),
                "name" => names.extend(
                    value
                        .split(',')
                        .map(str::to_string)
                        .filter(|n| !n.is_empty()),
                ),
                "push" => {
                    push = parse_bool(&value)
                        .ok_or_else(|| invalid(format!("push={value:?} is not a boolean")))?
                }
                "compression" => compression_name = Some(value.to_ascii_lowercase()),
                "compression-level" => compression_level = Some(value),
                "force-compression" => {
                    parse_bool(&value).ok_or_else(|| {
                        invalid(format!("force-compression={value:?} is not a boolean"))
                    })?;
                }
                "oci-mediatypes" => {
                    oci_media_types = Some(parse_bool(&value).ok_or_else(|| {
                        invalid(format!("oci-mediatypes={value:?} is not a boolean"))
                    })?)
                }
                other => return Err(invalid(format!("unknown key {other:?}"))),
            }
        }

        let compression = match compression_name.as_deref() {
            None | Some("gzip") => Compression::Gzip {
                level: match &compression_level {
                    None => None,
                    Some(level) => Some(level.parse::<u32>().ok().filter(|l| *l <= 9).ok_or_else(
                        || invalid(format!("gzip compression-level {level:?} must be 0 to 9")),
                    )?),
                },
            },
            Some("zstd") => Compression::Zstd {
                level: match &compression_level {
                    None => None,
                    Some(level) => Some(
                        level
                            .parse::<i32>()
                            .ok()
                            .filter(|l| (1..=22).contains(l))
                            .ok_or_else(|| {
                                invalid(format!("zstd compression-level {level:?} must be 1 to 22"))
                            })?,
                    ),
                },
            },
            Some("uncompressed") => {
                if compression_level.is_some() {
                    return Err(invalid("compression-level needs gzip or zstd".into()));
                }
                Compression::Uncompressed
            }
            Some(other) => {
                return Err(invalid(format!(
                    "unknown compression {other:?} (expected gzip, zstd or uncompressed)"
                )));
            }
        };

        let file_dest =
            |dest: Option<String>, kind: &str| -> Result<Destination, OutputSpecError> {
                match dest.as_deref() {
                    None | Some("") => Err(invalid(format!(
                        "type={kind} needs dest=FILE (or dest=- for stdout)"
                    ))),
                    Some("-") => Ok(Destination::Stdout),
                    Some(path) => Ok(Destination::File(PathBuf::from(path))),
                }
            };
        let kind = match kind_name.as_deref() {
            Some("oci") => OutputKind::Oci {
                dest: file_dest(dest, "oci")?,
            },
            Some("docker") => OutputKind::Docker {
                dest: file_dest(dest, "docker")?,
            },
            Some("tar") => OutputKind::Tar {
                dest: file_dest(dest, "tar")?,
            },
            Some("local") => match dest.as_deref() {
                None | Some("") => return Err(invalid("type=local needs dest=DIR".into())),
                Some("-") => {
                    return Err(invalid(
                        "type=local cannot write to stdout; use type=tar,dest=-".into(),
                    ));
                }
                Some(path) => OutputKind::Local {
                    dest: PathBuf::from(path),
                },
            },
            Some("image") | Some("registry") => {
                // `type=registry` is buildx's shorthand for `type=image,push=true`.
                let push = push || kind_name.as_deref() == Some("registry");
                if push && names.is_empty() {
                    return Err(invalid("pushing needs name=REF".into()));
                }
                OutputKind::Image { names, push }
            }
            Some(other) => {
                return Err(invalid(format!(
                    "unknown type {other:?} (expected oci, docker, local, tar, image or registry)"
                )));
            }
            None => return Err(invalid("missing type=...".into())),
        };
        Ok(OutputSpec {
            kind,
            compression,
            oci_media_types,
        })
    }
}

fn parse_bool(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "" | "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

/// Splits on commas outside double quotes, as buildx's CSV reader does (`name="a,b"`).
fn split_csv(spec: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in spec.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    fields.push(current);
    fields
        .into_iter()
        .filter(|f| !f.trim().is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oci_with_dest() {
        let spec = OutputSpec::parse("type=oci,dest=out.tar").unwrap();
        assert_eq!(
            spec.kind,
            OutputKind::Oci {
                dest: Destination::File("out.tar".into())
            }
        );
        assert_eq!(spec.compression, Compression::Gzip { level: None });
    }

    #[test]
    fn bare_path_is_local_and_dash_is_tar_on_stdout() {
        assert_eq!(
            OutputSpec::parse("out").unwrap().kind,
            OutputKind::Local { dest: "out".into() }
        );
        assert_eq!(
            OutputSpec::parse("-").unwrap().kind,
            OutputKind::Tar {
                dest: Destination::Stdout
            }
        );
    }

    #[test]
    fn compression_options() {
        let spec = OutputSpec::parse("type=docker,dest=x.tar,compression=zstd,compression-level=3")
            .unwrap();
        assert_eq!(spec.compression, Compression::Zstd { level: Some(3) });
        assert!(
            OutputSpec::parse("type=oci,dest=x,compression=gzip,compression-level=12").is_err()
        );
        assert!(OutputSpec::parse("type=oci,dest=x,compression=lz4").is_err());
        assert!(
            OutputSpec::parse("type=oci,dest=x,compression=uncompressed,compression-level=1")
                .is_err()
        );
    }

    #[test]
    fn image_names_and_push() {
        let spec = OutputSpec::parse("type=image,\"name=a:1,b:2\",push=true").unwrap();
        assert_eq!(
            spec.kind,
            OutputKind::Image {
                names: vec!["a:1".into(), "b:2".into()],
                push: true
            }
        );
        assert!(OutputSpec::parse("type=registry").is_err());
    }

    #[test]
    fn annotations_parse_like_buildx() {
        let plain = Annotation::parse("org.opencontainers.image.title=My app").unwrap();
        assert_eq!(plain.targets, vec![AnnotationTarget::Manifest]);
        assert_eq!(plain.key, "org.opencontainers.image.title");
        assert_eq!(plain.value, "My app");
        assert_eq!(plain.platform, None);

        let typed = Annotation::parse("manifest,index[linux/amd64]:a.b=c=d").unwrap();
        assert_eq!(
            typed.targets,
            vec![AnnotationTarget::Manifest, AnnotationTarget::Index]
        );
        assert_eq!(typed.platform.as_deref(), Some("linux/amd64"));
        assert_eq!((typed.key.as_str(), typed.value.as_str()), ("a.b", "c=d"));

        // A prefix that is not made of type-like characters is part of the key.
        let colon_key = Annotation::parse("com.Example:x=1").unwrap();
        assert_eq!(colon_key.key, "com.Example:x");
        assert_eq!(colon_key.targets, vec![AnnotationTarget::Manifest]);

        assert_eq!(
            Annotation::parse("manifest-descriptor:k=v")
                .unwrap()
                .targets,
            vec![AnnotationTarget::ManifestDescriptor]
        );
        let err = Annotation::parse("layer:k=v").unwrap_err().to_string();
        assert!(err.contains("unknown annotation type \"layer\""), "{err}");
        assert!(Annotation::parse("novalue").is_err());
        assert!(Annotation::parse("=v").is_err());
        assert!(Annotation::parse("manifest:=v").is_err());
        assert!(Annotation::parse("manifest[linux/amd64:k=v").is_err());
        assert!(Annotation::parse("manifest[]:k=v").is_err());
    }

    #[test]
    fn manifest_annotations_keep_this_platforms_and_refuse_other_types() {
        let parse = |values: &[&str]| -> Vec<Annotation> {
            values
                .iter()
                .map(|v| Annotation::parse(v).unwrap())
                .collect()
        };
        let wanted = parse(&[
            "a=1",
            "manifest:b=2",
            "manifest[linux/amd64]:c=3",
            "manifest[linux/arm64]:d=4",
        ]);
        let kept = manifest_annotations(&wanted, |p| p == "linux/amd64").unwrap();
        let keys: Vec<&str> = kept.keys().map(String::as_str).collect();
        assert_eq!(keys, ["a", "b", "c"]);
        assert_eq!(kept["c"], "3");

        let err = manifest_annotations(&parse(&["index:k=v"]), |_| true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("single-platform"), "{err}");
        assert!(err.contains("\"index:k=v\""), "the value as given: {err}");
        let err = manifest_annotations(&parse(&["index-descriptor:k=v"]), |_| true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("descriptor"), "{err}");
    }

    #[test]
    fn errors_name_the_problem() {
        let err = OutputSpec::parse("type=oci").unwrap_err().to_string();
        assert!(err.contains("needs dest"), "{err}");
        let err = OutputSpec::parse("type=floppy,dest=a")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown type \"floppy\""), "{err}");
        let err = OutputSpec::parse("type=oci,dest=a,colour=red")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown key \"colour\""), "{err}");
        assert!(OutputSpec::parse("").is_err());
        assert!(OutputSpec::parse("type=local,dest=-").is_err());
    }
}
