//! Personalization in the API: what a deployment (or a schedule) asks for
//! ([`Personalize`], its templates unfilled), and what one machine's agent gets
//! ([`Personalization`], filled in for it by the server).

use serde::{Deserialize, Serialize};

/// A machine's personalization, filled in for it by the server: what its agent writes into the
/// restored system after the image is written and verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Personalization {
    /// The machine's hostname (already valid as one).
    pub hostname: String,
    /// The machine's variables (its group's, its own, the built-in ones).
    #[serde(default)]
    pub vars: crate::template::Vars,
    /// Files to place, their contents filled in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<PlacedFile>,
    /// The first-boot script, filled in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_boot: Option<String>,
    /// UEFI: the restored system's boot entry goes after the network entries, not first.
    #[serde(default)]
    pub keep_network_first: bool,
}

/// What a deployment does to each machine's restored system after writing it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Personalize {
    /// Personalize at all (`false`: the image is written untouched).
    #[serde(default = "on")]
    pub enabled: bool,
    /// The hostname's template (`{name}` unless said); see [`crate::template`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Files to place into the restored system (their contents are templates).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<PlacedFile>,
    /// A script (a template) run once at the restored system's first boot: on Linux a
    /// one-shot systemd unit that removes itself after it ran, on Windows
    /// `SetupComplete.cmd`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_boot: Option<String>,
    /// On UEFI machines, keep network boot ahead of the restored system's boot entry, so the
    /// lab can be redeployed without touching each machine (None: each machine's group says;
    /// off when it has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_network_first: Option<bool>,
}

/// A file placed into the restored system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PlacedFile {
    /// Its absolute path in the restored system (`/etc/motd`).
    pub path: String,
    /// Its content: a template for the personalization (filled in for each machine).
    pub content: String,
    /// Its mode, octal (`0644` unless said).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

impl PlacedFile {
    /// Checks the path (absolute, no `.` or `..` part, no NUL) and the mode; returns the mode.
    pub fn check(&self) -> Result<u32, String> {
        let p = &self.path;
        if !p.starts_with('/')
            || p.len() > 1024
            || p.contains('\0')
            || p.split('/').any(|c| c == "." || c == "..")
            || p.ends_with('/')
        {
            return Err(format!(
                "file {p:?}: an absolute path of the restored system, without . or .. parts"
            ));
        }
        match &self.mode {
            None => Ok(0o644),
            Some(m) => u32::from_str_radix(m.trim_start_matches("0o"), 8)
                .ok()
                .filter(|&m| m <= 0o7777)
                .ok_or_else(|| format!("file {p:?}: mode {m:?} is not an octal mode (0644)")),
        }
    }
}

fn on() -> bool {
    true
}

impl Default for Personalize {
    fn default() -> Self {
        Self {
            enabled: true,
            hostname: None,
            files: Vec::new(),
            first_boot: None,
            keep_network_first: None,
        }
    }
}

impl Personalize {
    /// The hostname template in use.
    pub fn hostname_template(&self) -> &str {
        self.hostname.as_deref().unwrap_or("{name}")
    }
}
