//! Whether the RabbitMQ user's permissions cover Postbox's names.
//!
//! A permission is a regular expression that RabbitMQ matches unanchored, as Erlang's `re:run` (PCRE)
//! does. The `regex` crate reads the syntax permissions use (literals, classes, groups, alternation,
//! quantifiers, `\b`), with ASCII classes as PCRE's defaults. What it does not read (look-arounds,
//! back-references) leaves the judgement undecided: never a guess.

use serde::Deserialize;

use super::Permissions;

/// `/api/permissions/<vhost>/<user>`: the user's three patterns.
#[derive(Deserialize)]
pub(super) struct PermissionsJson {
    pub configure: String,
    pub write: String,
    pub read: String,
}

/// A permission as a matcher, or `None` when its syntax is outside what `regex` reads.
fn matcher(pattern: &str) -> Option<regex::bytes::Regex> {
    regex::bytes::RegexBuilder::new(pattern)
        .unicode(false)
        .build()
        .ok()
}

/// The names Postbox declares, binds, publishes to and consumes from. Every permission must cover each.
fn postbox_names(prefix: &str) -> Vec<String> {
    vec![
        format!("{prefix}.events"),
        format!("{prefix}.deadletter"),
        format!("{prefix}.deadletters"),
        format!("{prefix}.control"),
        format!("{prefix}.user.42"),
        format!("{prefix}.client.42.tab-1"),
    ]
}

pub(super) fn judge_permissions(p: &mut Permissions, json: &PermissionsJson, prefix: &str) {
    let names = postbox_names(prefix);
    let mut undecided = Vec::new();
    for (kind, pattern) in [
        ("configure", &json.configure),
        ("write", &json.write),
        ("read", &json.read),
    ] {
        // RabbitMQ reads an empty pattern as `^$`: nothing.
        let effective = if pattern.is_empty() { "^$" } else { pattern };
        let compiled = matcher(effective);
        for name in &names {
            match compiled.as_ref().map(|m| m.is_match(name.as_bytes())) {
                Some(true) => {}
                Some(false) => p.uncovered.push(format!("{kind}: {name}")),
                None => {
                    undecided.push(kind);
                    break;
                }
            }
        }
    }
    p.configure = Some(json.configure.clone());
    p.write = Some(json.write.clone());
    p.read = Some(json.read.clone());
    if !p.uncovered.is_empty() {
        p.covers_postbox_names = Some(false);
        p.detail = format!(
            "do not cover Postbox's {prefix}.* names (Postbox needs configure, write and read on them)"
        );
    } else if !undecided.is_empty() {
        p.detail = format!(
            "could not be judged ({} use(s) regular-expression syntax this check does not evaluate); \
             Postbox needs configure, write and read on {prefix}.* names",
            undecided.join(", ")
        );
    } else {
        p.covers_postbox_names = Some(true);
        p.detail = format!("cover Postbox's {prefix}.* names");
    }
}

pub(super) fn permission_message(p: &Permissions, prefix: &str) -> String {
    let pattern = format!(r"^{}\..*", regex::escape(prefix));
    format!(
        "RabbitMQ user {user} cannot use Postbox's names on vhost {vhost} (configure {c:?}, write {w:?}, \
         read {r:?}; not covered: {uncovered}); grant them with `rabbitmqctl set_permissions -p {qv} {qu} \
         '{pattern}' '{pattern}' '{pattern}'`",
        user = p.user,
        vhost = p.vhost,
        c = p.configure.as_deref().unwrap_or(""),
        w = p.write.as_deref().unwrap_or(""),
        r = p.read.as_deref().unwrap_or(""),
        uncovered = p.uncovered.join(", "),
        qv = shell_quote(&p.vhost),
        qu = shell_quote(&p.user),
    )
}

pub(super) fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./@:".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_patterns_are_matched_like_rabbitmq() {
        let m = |p: &str, s: &str| matcher(p).map(|r| r.is_match(s.as_bytes()));
        assert_eq!(m(".*", "postbox.events"), Some(true));
        assert_eq!(m(r"^postbox\..*", "postbox.user.42"), Some(true));
        assert_eq!(m(r"^postbox\..*", "postboxes.user.42"), Some(false));
        assert_eq!(m(r"^postbox\..*", "other.postbox.user"), Some(false));
        assert_eq!(m(r"postbox\.", "x.postbox.y"), Some(true), "unanchored");
        assert_eq!(m("^$", "postbox.events"), Some(false));
        assert_eq!(
            m(r"^(postbox|chat)\.(user|client)\.", "chat.client.1.a"),
            Some(true)
        );
        assert_eq!(
            m(r"^(postbox|chat)\.(user|client)\.", "chat.events"),
            Some(false)
        );
        assert_eq!(m(r"^postbox\.user\.\d+$", "postbox.user.42"), Some(true));
        assert_eq!(m(r"^postbox\.user\.\d+$", "postbox.user.42x"), Some(false));
        assert_eq!(m(r"^[a-z]+\.[^.]+$", "postbox.events"), Some(true));
        assert_eq!(m(r"^[a-z]+\.[^.]+$", "postbox.user.1"), Some(false));
        assert_eq!(m(r"^p.{6}\.", "postbox.x"), Some(true));
        assert_eq!(m(r"^p.{2,3}\.", "postbox.x"), Some(false));
        assert_eq!(
            m(r"^(?:amq\.gen.*|postbox\..*)$", "postbox.deadletters"),
            Some(true)
        );
        assert_eq!(
            m(r"^(a*)*$", "aaaaaaaaaaaaaaaaaaaaaaaaaaaab"),
            Some(false),
            "no catastrophic backtracking"
        );
        assert_eq!(m(r"^p.*?\.", "postbox.x"), Some(true), "lazy");
        assert_eq!(
            m(r"\d", "postbox.user.\u{663}"),
            Some(false),
            "ASCII digits, as PCRE"
        );
        assert_eq!(m(r"^(?=postbox)", "postbox.x"), None, "look-ahead");
        assert_eq!(m(r"^postbox\b", "postbox.x"), Some(true), "word boundary");
        assert_eq!(m(r"^(p)\1", "pp"), None, "back-reference");
        assert_eq!(m(r"(", "x"), None);
        assert_eq!(m(r"a)", "a"), None);
        assert_eq!(m(r"*a", "a"), None);
    }

    #[test]
    fn permissions_are_judged_on_postbox_names() {
        let judge = |c: &str, w: &str, r: &str| {
            let mut p = Permissions {
                user: "u".into(),
                vhost: "/".into(),
                configure: None,
                write: None,
                read: None,
                covers_postbox_names: None,
                uncovered: Vec::new(),
                detail: String::new(),
            };
            let json = PermissionsJson {
                configure: c.into(),
                write: w.into(),
                read: r.into(),
            };
            judge_permissions(&mut p, &json, "postbox");
            p
        };
        assert_eq!(judge(".*", ".*", ".*").covers_postbox_names, Some(true));
        let p = r"^postbox\..*";
        assert_eq!(judge(p, p, p).covers_postbox_names, Some(true));
        let partial = judge(p, p, r"^postbox\.user\.");
        assert_eq!(partial.covers_postbox_names, Some(false));
        assert!(
            partial
                .uncovered
                .contains(&"read: postbox.events".to_owned())
        );
        // An empty permission is `^$`: nothing.
        assert_eq!(judge("", p, p).covers_postbox_names, Some(false));
        assert_eq!(judge(r"^(?!amq\.)", p, p).covers_postbox_names, None);
    }

    #[test]
    fn names_are_quoted_for_the_shell() {
        assert_eq!(shell_quote("/"), "/");
        assert_eq!(shell_quote("my vhost"), "'my vhost'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
