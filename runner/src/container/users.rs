//! User and group names of an image: its `/etc/passwd` and `/etc/group`,
//! read from the topmost layer that has each file, so that an image's
//! `User: "app"` or `"app:staff"` resolves to the ids the image itself
//! gives them. A layer's file is used only if it is a regular file (a
//! link named `passwd` is skipped), and at most [`MAX_FILE_BYTES`] of it is
//! read. Limit: a link among the file's parent directories (`etc -> /etc`)
//! is still followed on the host; resolving inside the image's tree only is
//! issue 11's finding 6.

use std::io::Read;
use std::path::PathBuf;

/// Most bytes read of an image's `/etc/passwd` or `/etc/group`.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Which id a name is looked up for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    /// A user name → its uid (`/etc/passwd`, field 3).
    User,
    /// A user name → its primary gid (`/etc/passwd`, field 4).
    PrimaryGroup,
    /// A group name → its gid (`/etc/group`, field 3).
    Group,
}

impl std::fmt::Display for IdKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IdKind::User => "user",
            IdKind::PrimaryGroup => "primary group of user",
            IdKind::Group => "group",
        })
    }
}

/// The contents of an image's `/etc/passwd` and `/etc/group`.
#[derive(Debug, Default)]
pub struct ImageUsers {
    passwd: String,
    group: String,
}

impl ImageUsers {
    /// Reads the files from the image's unpacked `layers` (bottom first);
    /// a missing or unreadable file counts as empty.
    pub fn read(layers: &[PathBuf]) -> ImageUsers {
        let top = |file: &str| -> String {
            layers
                .iter()
                .rev()
                .map(|l| l.join(file))
                .find(|p| p.symlink_metadata().is_ok_and(|m| m.is_file()))
                .and_then(|p| {
                    let mut text = String::new();
                    std::fs::File::open(p)
                        .ok()?
                        .take(MAX_FILE_BYTES)
                        .read_to_string(&mut text)
                        .ok()?;
                    Some(text)
                })
                .unwrap_or_default()
        };
        ImageUsers {
            passwd: top("etc/passwd"),
            group: top("etc/group"),
        }
    }

    /// The files' contents as given.
    #[cfg(test)]
    fn from_text(passwd: &str, group: &str) -> ImageUsers {
        ImageUsers {
            passwd: passwd.to_owned(),
            group: group.to_owned(),
        }
    }

    /// The id `name` has as a `kind`, if the image names it.
    pub fn find(&self, kind: IdKind, name: &str) -> Option<u32> {
        let (text, field) = match kind {
            IdKind::User => (&self.passwd, 2),
            IdKind::PrimaryGroup => (&self.passwd, 3),
            IdKind::Group => (&self.group, 2),
        };
        text.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.first() == Some(&name))
                .then(|| fields.get(field)?.parse().ok())
                .flatten()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                          app:x:1000:1001:App:/home/app:/bin/sh\n\
                          broken:x:notanumber:5::/:/bin/false\n";
    const GROUP: &str = "root:x:0:\nstaff:x:50:app\napp:x:1001:\n";

    #[test]
    fn finds_users_and_groups() {
        let users = ImageUsers::from_text(PASSWD, GROUP);
        assert_eq!(users.find(IdKind::User, "root"), Some(0));
        assert_eq!(users.find(IdKind::User, "app"), Some(1000));
        assert_eq!(users.find(IdKind::PrimaryGroup, "app"), Some(1001));
        assert_eq!(users.find(IdKind::Group, "staff"), Some(50));
        assert_eq!(users.find(IdKind::Group, "app"), Some(1001));
    }

    #[test]
    fn unknown_or_malformed_entries_are_absent() {
        let users = ImageUsers::from_text(PASSWD, GROUP);
        assert_eq!(users.find(IdKind::User, "nobody"), None);
        assert_eq!(users.find(IdKind::User, "broken"), None);
        assert_eq!(users.find(IdKind::Group, "app:x"), None);
        assert_eq!(users.find(IdKind::User, ""), None);
        assert_eq!(ImageUsers::default().find(IdKind::User, "root"), None);
    }

    #[test]
    fn reads_the_topmost_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let (lower, upper) = (dir.path().join("lower"), dir.path().join("upper"));
        for layer in [&lower, &upper] {
            std::fs::create_dir_all(layer.join("etc")).unwrap();
        }
        std::fs::write(lower.join("etc/passwd"), "app:x:1:1::/:/bin/sh\n").unwrap();
        std::fs::write(lower.join("etc/group"), "staff:x:7:\n").unwrap();
        std::fs::write(upper.join("etc/passwd"), "app:x:2:2::/:/bin/sh\n").unwrap();
        // A link in the upper layer is skipped, not followed.
        std::os::unix::fs::symlink("/etc/group", upper.join("etc/group")).unwrap();
        let users = ImageUsers::read(&[lower, upper]);
        assert_eq!(users.find(IdKind::User, "app"), Some(2));
        assert_eq!(users.find(IdKind::Group, "staff"), Some(7));
        assert_eq!(users.find(IdKind::Group, "root"), None);
    }
}
