//! The ids an image's `User` (`name`, `uid`, `name:group`, `uid:gid`)
//! stands for, looked up in the image's own `/etc/passwd` and `/etc/group`
//! as the container will see them: read from the merged layers with every
//! link resolved inside the image ([`ImageTree`]), never on the host's
//! tree. (Issue 11, finding 6: the files were read through the layers'
//! links, so a layer entry `etc -> /etc` made an image's `User: "_apt"` run
//! as the host's `_apt`.)
//!
//! The backend resolves the user when a function is deployed, so an image
//! naming a user or group it does not have is refused then (a 400), not at
//! its first request, and again for each sandbox's plan. At most
//! [`MAX_FILE_BYTES`] of each file are read; a larger one is an error.

use std::path::PathBuf;

use crate::container::plan::IdMap;
use crate::image::{ImageTree, TreeError};

/// Most bytes read of an image's `/etc/passwd` or `/etc/group`.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

const PASSWD: &str = "/etc/passwd";
const GROUP: &str = "/etc/group";

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

/// The uid and gid a handler runs as, in the container's user namespace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ids {
    pub uid: u32,
    pub gid: u32,
}

/// Why an image's `User` cannot be run as.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("image user {user:?} cannot be resolved: no {kind} {name:?} in the image's {file}")]
    Unknown {
        user: String,
        kind: IdKind,
        name: String,
        file: &'static str,
    },
    #[error("image user {user:?} cannot be resolved: ids above {max} are not mapped")]
    Unmapped { user: String, max: u32 },
    #[error("image user {user:?} cannot be resolved: {source}")]
    Unreadable {
        user: String,
        #[source]
        source: TreeError,
    },
}

/// The ids of the image's `user` (its config's `User`; none or empty is
/// root), looking names up in the image whose unpacked layers are `layers`
/// (bottom first). A name is read from the image's files only when the
/// user is not given by number.
pub fn resolve(user: Option<&str>, layers: &[PathBuf], id_map: IdMap) -> Result<Ids, UserError> {
    let tree = ImageTree::new(layers);
    resolve_in(user, id_map, &|file| {
        let bytes = tree.read(file, MAX_FILE_BYTES)?.unwrap_or_default();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    })
}

/// [`resolve`] with the image's files read by `read` (`/etc/passwd` or
/// `/etc/group` → its text, empty if missing).
fn resolve_in(
    user: Option<&str>,
    id_map: IdMap,
    read: &dyn Fn(&'static str) -> Result<String, TreeError>,
) -> Result<Ids, UserError> {
    let Some(spec) = user.filter(|u| !u.is_empty()) else {
        return Ok(Ids::default());
    };
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let unknown = |kind: IdKind, name: &str, file: &'static str| UserError::Unknown {
        user: spec.to_owned(),
        kind,
        name: name.to_owned(),
        file,
    };
    let read = |file: &'static str| {
        read(file).map_err(|source| UserError::Unreadable {
            user: spec.to_owned(),
            source,
        })
    };
    let (uid, primary_gid) = match user.parse::<u32>() {
        // A bare uid gets gid 0.
        Ok(uid) => (uid, 0),
        Err(_) => {
            let passwd = read(PASSWD)?;
            let uid = find(&passwd, IdKind::User, user)
                .ok_or_else(|| unknown(IdKind::User, user, PASSWD))?;
            (uid, find(&passwd, IdKind::PrimaryGroup, user).unwrap_or(0))
        }
    };
    let gid = match group.map(|g| (g, g.parse::<u32>())) {
        None => primary_gid,
        Some((_, Ok(gid))) => gid,
        Some((name, Err(_))) => find(&read(GROUP)?, IdKind::Group, name)
            .ok_or_else(|| unknown(IdKind::Group, name, GROUP))?,
    };
    if uid >= id_map.size || gid >= id_map.size {
        return Err(UserError::Unmapped {
            user: spec.to_owned(),
            max: id_map.size.saturating_sub(1),
        });
    }
    Ok(Ids { uid, gid })
}

/// The id `name` has as a `kind` in `text` (the file that kind is read
/// from), if the file names it.
fn find(text: &str, kind: IdKind, name: &str) -> Option<u32> {
    let field = match kind {
        IdKind::User | IdKind::Group => 2,
        IdKind::PrimaryGroup => 3,
    };
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.first() == Some(&name))
            .then(|| fields.get(field)?.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD_TEXT: &str = "root:x:0:0:root:/root:/bin/sh\n\
                               app:x:1000:1001:App:/home/app:/bin/sh\n\
                               broken:x:notanumber:5::/:/bin/false\n";
    const GROUP_TEXT: &str = "root:x:0:\nstaff:x:50:app\napp:x:1001:\n";

    fn files(file: &'static str) -> Result<String, TreeError> {
        Ok(match file {
            PASSWD => PASSWD_TEXT,
            _ => GROUP_TEXT,
        }
        .to_owned())
    }

    fn ids(user: &str) -> Result<(u32, u32), UserError> {
        resolve_in(Some(user), IdMap::default(), &files).map(|ids| (ids.uid, ids.gid))
    }

    #[test]
    fn finds_users_and_groups() {
        assert_eq!(find(PASSWD_TEXT, IdKind::User, "root"), Some(0));
        assert_eq!(find(PASSWD_TEXT, IdKind::User, "app"), Some(1000));
        assert_eq!(find(PASSWD_TEXT, IdKind::PrimaryGroup, "app"), Some(1001));
        assert_eq!(find(GROUP_TEXT, IdKind::Group, "staff"), Some(50));
        assert_eq!(find(GROUP_TEXT, IdKind::Group, "app"), Some(1001));
    }

    #[test]
    fn unknown_or_malformed_entries_are_absent() {
        assert_eq!(find(PASSWD_TEXT, IdKind::User, "nobody"), None);
        assert_eq!(find(PASSWD_TEXT, IdKind::User, "broken"), None);
        assert_eq!(find(GROUP_TEXT, IdKind::Group, "app:x"), None);
        assert_eq!(find(PASSWD_TEXT, IdKind::User, ""), None);
        assert_eq!(find("", IdKind::User, "root"), None);
    }

    #[test]
    fn users_resolve_by_number_or_name() {
        for (user, expected) in [
            ("app", (1000, 1001)),
            ("app:staff", (1000, 50)),
            ("app:7", (1000, 7)),
            ("7:8", (7, 8)),
            ("9", (9, 0)),
            ("0", (0, 0)),
        ] {
            assert_eq!(ids(user).unwrap(), expected, "{user}");
        }
        let root = resolve_in(None, IdMap::default(), &files).unwrap();
        assert_eq!(root, Ids::default());
        let empty = resolve_in(Some(""), IdMap::default(), &files).unwrap();
        assert_eq!(empty, Ids::default());
    }

    #[test]
    fn refusals_name_the_user_and_the_file() {
        let err = ids("nobody").unwrap_err().to_string();
        assert_eq!(
            err,
            "image user \"nobody\" cannot be resolved: no user \"nobody\" in the image's /etc/passwd"
        );
        let err = ids("app:wheel").unwrap_err().to_string();
        assert!(
            err.contains("no group \"wheel\" in the image's /etc/group"),
            "{err}"
        );
        let err = ids("70000").unwrap_err().to_string();
        assert!(err.contains("ids above 65535 are not mapped"), "{err}");
        assert!(ids("1:70000").is_err());
    }

    #[test]
    fn numbers_need_no_files() {
        let unreadable = |_: &'static str| -> Result<String, TreeError> {
            Err(TreeError::TooLarge {
                path: PASSWD.into(),
                limit: MAX_FILE_BYTES,
            })
        };
        let ids = resolve_in(Some("7:8"), IdMap::default(), &unreadable).unwrap();
        assert_eq!(ids, Ids { uid: 7, gid: 8 });
        let err = resolve_in(Some("app"), IdMap::default(), &unreadable).unwrap_err();
        assert!(matches!(err, UserError::Unreadable { .. }), "{err}");
    }

    /// Issue 11, finding 6: the files are the image's, read through its
    /// links inside the image, whichever layer holds them.
    #[test]
    fn the_images_files_are_read_inside_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let (lower, upper) = (dir.path().join("lower"), dir.path().join("upper"));
        for layer in [&lower, &upper] {
            std::fs::create_dir_all(layer.join("etc")).unwrap();
        }
        std::fs::write(lower.join("etc/passwd"), "app:x:1:1::/:/bin/sh\n").unwrap();
        std::fs::write(lower.join("etc/group"), "staff:x:7:\n").unwrap();
        std::fs::create_dir_all(upper.join("usr/lib")).unwrap();
        std::fs::write(upper.join("usr/lib/passwd"), "app:x:2:3::/:/bin/sh\n").unwrap();
        // A link in the upper layer is followed inside the image: an
        // absolute target starts at the image's root, not the host's.
        std::os::unix::fs::symlink("/usr/lib/passwd", upper.join("etc/passwd")).unwrap();
        let layers = [lower.clone(), upper.clone()];
        let ids = resolve(Some("app:staff"), &layers, IdMap::default()).unwrap();
        assert_eq!(ids, Ids { uid: 2, gid: 7 });

        // `etc -> /etc` is a loop inside the image, never the host's /etc.
        let linked = dir.path().join("linked");
        std::fs::create_dir(&linked).unwrap();
        std::os::unix::fs::symlink("/etc", linked.join("etc")).unwrap();
        let err = resolve(Some("root"), &[linked], IdMap::default()).unwrap_err();
        assert!(
            matches!(
                &err,
                UserError::Unreadable {
                    source: TreeError::TooManyLinks { .. },
                    ..
                }
            ),
            "{err}"
        );
        // Without the files, no name resolves (the host has `root`).
        let bare = dir.path().join("bare");
        std::fs::create_dir(&bare).unwrap();
        let err = resolve(Some("root"), &[bare], IdMap::default()).unwrap_err();
        assert!(matches!(err, UserError::Unknown { .. }), "{err}");
    }
}
