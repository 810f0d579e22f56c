//! What an image reference says of the version it runs: the tag, a digest, or nothing (podman
//! then takes `:latest`). Shown by `mcp ps` (VERSION) and checked by `mcp deploy`, which warns
//! about references whose content can change under the same name.

use super::{Kind, Plan};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageVersion<'a> {
    Tag(&'a str),
    /// `name@sha256:...`: pinned to one image.
    Digest(&'a str),
    /// No tag: podman takes `:latest`.
    Untagged,
}

/// The version part of a container image reference (`host:port/repo:tag` takes the tag of the
/// last path element: a registry's port is not one).
pub fn image_version(image: &str) -> ImageVersion<'_> {
    if let Some((_, digest)) = image.split_once('@') {
        return ImageVersion::Digest(digest);
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, tag)) if !tag.is_empty() => ImageVersion::Tag(tag),
        _ => ImageVersion::Untagged,
    }
}

/// `mcp ps`'s VERSION: the tag, `@` and 12 hex of a digest, `latest` for an untagged
/// container image, `-` for what is not an image reference (a VM's kernel or disk path).
pub fn shown_version(image: &str) -> String {
    if image.is_empty() || image.starts_with('/') {
        return "-".into();
    }
    match image_version(image) {
        ImageVersion::Tag(t) => t.to_string(),
        ImageVersion::Digest(d) => format!("@{}", d.strip_prefix("sha256:").unwrap_or(d).chars().take(12).collect::<String>()),
        ImageVersion::Untagged => "latest".into(),
    }
}

/// One warning per container component whose image has no tag or is `:latest`: what runs then
/// changes with whatever the registry calls latest, and a rollback cannot name the old version.
pub fn floating_images(plan: &Plan) -> Vec<String> {
    plan.components
        .iter()
        .filter(|c| c.kind == Kind::Container && !c.image.is_empty())
        .filter_map(|c| {
            let why = match image_version(&c.image) {
                ImageVersion::Untagged => "has no tag (podman takes :latest)",
                ImageVersion::Tag("latest") => "is :latest",
                _ => return None,
            };
            Some(format!(
                "{}/{}: image {} {why}: what runs changes whenever the tag moves; pin a version tag or a digest (name@sha256:...)",
                plan.name, c.name, c.image
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_of_references() {
        assert_eq!(image_version("nginx"), ImageVersion::Untagged);
        assert_eq!(image_version("nginx:1.27"), ImageVersion::Tag("1.27"));
        assert_eq!(image_version("reg.lan:5000/mc/app"), ImageVersion::Untagged);
        assert_eq!(image_version("reg.lan:5000/mc/app:v2"), ImageVersion::Tag("v2"));
        assert_eq!(image_version("reg.lan:5000/mc/app@sha256:abc"), ImageVersion::Digest("sha256:abc"));
        assert_eq!(shown_version("reg.lan:5000/mc/app@sha256:0123456789abcdef"), "@0123456789ab");
        assert_eq!(shown_version("localhost/app"), "latest");
        assert_eq!(shown_version("/nix/store/x-mcat.img"), "-");
        assert_eq!(shown_version(""), "-");
    }

    #[test]
    fn floating_tags_are_named() {
        let plan: Plan = crate::plan::file::parse_service_toml(
            "name = \"s\"\nnode = \"n\"\n[[components]]\nname = \"a\"\nimage = \"nginx\"\n[[components]]\nname = \"b\"\nimage = \"r:5000/x:latest\"\n\
             [[components]]\nname = \"c\"\nimage = \"r:5000/x:1\"\n",
            std::path::Path::new("s.toml"),
        )
        .unwrap();
        let w = floating_images(&plan);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].starts_with("s/a: image nginx has no tag") && w[1].starts_with("s/b: image r:5000/x:latest is :latest"), "{w:?}");
    }
}
