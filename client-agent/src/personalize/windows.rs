//! Windows systems (an NTFS filesystem holding `Windows/System32/config/SYSTEM`): an image
//! generalized with sysprep carries an answer file that Windows reads at its next boot; the
//! agent sets the `ComputerName` of its specialize pass to the machine's hostname, and any
//! other value a variable names (`unattend:COMPONENT/ELEMENT[/...]`, e.g.
//! `unattend:Microsoft-Windows-Shell-Setup/RegisteredOrganization`). The XML is edited as a
//! tree of quick-xml events: what is not changed is written back as it was read (comments,
//! attributes, whitespace). A first-boot script becomes `Windows\Setup\Scripts\
//! SetupComplete.cmd`, which Windows runs once after setup. An image that was not generalized
//! is left alone, and the report says so. NTFS names are matched without regard to case.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use quick_xml::events::{BytesEnd, BytesStart, BytesText, Event};
use quick_xml::{Reader, Writer};

/// Where sysprep leaves the answer file Windows reads at the next boot, in the order Windows
/// looks (the first found is the one used; each one found is edited).
const ANSWER_FILES: &[&[&str]] = &[
    &["Windows", "Panther", "unattend.xml"],
    &["Windows", "Panther", "Unattend", "unattend.xml"],
    &["Windows", "System32", "Sysprep", "unattend.xml"],
];

/// The component holding `ComputerName`.
const SHELL_SETUP: &str = "Microsoft-Windows-Shell-Setup";

/// `rel` under `root`, each part matched without regard to case (None when absent).
pub(crate) fn find(root: &Path, rel: &[&str]) -> Option<PathBuf> {
    let mut at = root.to_path_buf();
    for part in rel {
        let name = std::fs::read_dir(&at)
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .find(|n| n.to_string_lossy().eq_ignore_ascii_case(part))?;
        at.push(name);
    }
    Some(at)
}

/// Whether the filesystem at `root` holds a Windows system.
pub(crate) fn is_windows(root: &Path) -> bool {
    find(root, &["Windows", "System32", "config", "SYSTEM"]).is_some_and(|p| p.is_file())
}

/// The answer files of the system at `root` (empty: not generalized).
pub(crate) fn answer_files(root: &Path) -> Vec<PathBuf> {
    ANSWER_FILES
        .iter()
        .filter_map(|rel| find(root, rel))
        .filter(|p| p.is_file())
        .collect()
}

/// One element: its start tag as read, and what it holds.
#[derive(Debug)]
struct Elem {
    start: BytesStart<'static>,
    children: Vec<Node>,
    /// Read as `<x/>` (written back so while it stays empty).
    empty: bool,
}

#[derive(Debug)]
enum Node {
    Elem(Elem),
    Other(Event<'static>),
}

impl Elem {
    fn new(name: &str) -> Self {
        Self {
            start: BytesStart::new(name.to_string()),
            children: Vec::new(),
            empty: false,
        }
    }

    fn local(&self) -> String {
        String::from_utf8_lossy(self.start.local_name().as_ref()).into_owned()
    }

    fn attr(&self, name: &str) -> Option<String> {
        self.start
            .attributes()
            .filter_map(Result::ok)
            .find(|a| a.key.local_name().as_ref() == name.as_bytes())
            .and_then(|a| {
                a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                    .ok()
                    .map(|v| v.into_owned())
            })
    }

    fn elems_mut(&mut self) -> impl Iterator<Item = &mut Self> {
        self.children.iter_mut().filter_map(|n| match n {
            Node::Elem(e) => Some(e),
            Node::Other(_) => None,
        })
    }

    /// The child named `name`, made (at the end) when there is none.
    fn child(&mut self, name: &str) -> &mut Self {
        let i = self
            .children
            .iter()
            .position(|n| matches!(n, Node::Elem(e) if e.local() == name));
        let i = match i {
            Some(i) => i,
            None => {
                self.children.push(Node::Elem(Self::new(name)));
                self.children.len() - 1
            }
        };
        match &mut self.children[i] {
            Node::Elem(e) => e,
            Node::Other(_) => unreachable!("found or pushed an element"),
        }
    }

    /// The element's text, as one string.
    fn text(&self) -> String {
        let mut s = String::new();
        for n in &self.children {
            match n {
                Node::Other(Event::Text(t)) => s.push_str(&t.decode().unwrap_or_default()),
                Node::Other(Event::CData(t)) => s.push_str(&t.decode().unwrap_or_default()),
                Node::Other(Event::GeneralRef(r)) => {
                    let name = r.decode().unwrap_or_default();
                    s.push_str(match &*name {
                        "amp" => "&",
                        "lt" => "<",
                        "gt" => ">",
                        "quot" => "\"",
                        "apos" => "'",
                        _ => "",
                    })
                }
                _ => {}
            }
        }
        s
    }

    fn set_text(&mut self, value: &str) {
        self.children = vec![Node::Other(Event::Text(BytesText::new(value).into_owned()))];
        self.empty = false;
    }

    fn write(&self, w: &mut Writer<Vec<u8>>) -> std::io::Result<()> {
        if self.empty && self.children.is_empty() {
            return w.write_event(Event::Empty(self.start.borrow()));
        }
        w.write_event(Event::Start(self.start.borrow()))?;
        for c in &self.children {
            match c {
                Node::Elem(e) => e.write(w)?,
                Node::Other(ev) => w.write_event(ev.borrow())?,
            }
        }
        let name = String::from_utf8_lossy(self.start.name().as_ref()).into_owned();
        w.write_event(Event::End(BytesEnd::new(name)))
    }
}

/// An answer file, read into a tree.
struct Answer {
    bom: bool,
    /// Before the root element (declaration, comments) and after it.
    before: Vec<Event<'static>>,
    root: Elem,
    after: Vec<Event<'static>>,
}

impl Answer {
    fn parse(bytes: &[u8]) -> anyhow::Result<Self> {
        let (bom, body) = match bytes.strip_prefix(b"\xEF\xBB\xBF") {
            Some(b) => (true, b),
            None => (false, bytes),
        };
        if body.starts_with(b"\xFF\xFE") || body.starts_with(b"\xFE\xFF") {
            bail!("it is UTF-16: only UTF-8 answer files are edited");
        }
        let text = std::str::from_utf8(body).context("it is not UTF-8")?;
        let mut r = Reader::from_str(text);
        r.config_mut().check_end_names = true;
        let (mut before, mut after) = (Vec::new(), Vec::new());
        let mut stack: Vec<Elem> = Vec::new();
        let mut root = None;
        loop {
            let ev = r
                .read_event()
                .with_context(|| format!("malformed XML at byte {}", r.buffer_position()))?
                .into_owned();
            let done =
                |e: Elem, stack: &mut Vec<Elem>, root: &mut Option<Elem>| match stack.last_mut() {
                    Some(p) => p.children.push(Node::Elem(e)),
                    None => *root = Some(e),
                };
            match ev {
                Event::Eof => break,
                Event::Start(s) => stack.push(Elem {
                    start: s,
                    children: Vec::new(),
                    empty: false,
                }),
                Event::Empty(s) => {
                    let e = Elem {
                        start: s,
                        children: Vec::new(),
                        empty: true,
                    };
                    done(e, &mut stack, &mut root);
                }
                Event::End(_) => {
                    let e = stack.pop().context("an end tag with no start")?;
                    done(e, &mut stack, &mut root);
                }
                other => match stack.last_mut() {
                    Some(p) => p.children.push(Node::Other(other)),
                    None if root.is_none() => before.push(other),
                    None => after.push(other),
                },
            }
        }
        if !stack.is_empty() {
            bail!("malformed XML: <{}> is never closed", stack[0].local());
        }
        let root = root.context("no root element")?;
        if root.local() != "unattend" {
            bail!("its root element is <{}>, not <unattend>", root.local());
        }
        Ok(Self {
            bom,
            before,
            root,
            after,
        })
    }

    fn write(&self) -> Vec<u8> {
        let mut w = Writer::new(Vec::new());
        let io = (|| {
            for e in &self.before {
                w.write_event(e.borrow())?;
            }
            self.root.write(&mut w)?;
            for e in &self.after {
                w.write_event(e.borrow())?;
            }
            std::io::Result::Ok(())
        })();
        io.expect("writing to memory");
        let mut out = if self.bom {
            b"\xEF\xBB\xBF".to_vec()
        } else {
            Vec::new()
        };
        out.extend(w.into_inner());
        out
    }

    /// The processor architecture the file's components name (amd64 unless said).
    fn arch(&self) -> String {
        fn find(e: &Elem) -> Option<String> {
            if e.local() == "component" {
                if let Some(a) = e.attr("processorArchitecture") {
                    return Some(a);
                }
            }
            e.children.iter().find_map(|n| match n {
                Node::Elem(c) => find(c),
                Node::Other(_) => None,
            })
        }
        find(&self.root).unwrap_or_else(|| "amd64".into())
    }

    /// The component `name` of the pass `pass`, made when missing.
    fn component(&mut self, pass: &str, name: &str) -> &mut Elem {
        let arch = self.arch();
        let has_pass = self
            .root
            .elems_mut()
            .any(|e| e.local() == "settings" && e.attr("pass").as_deref() == Some(pass));
        if !has_pass {
            let mut s = Elem::new("settings");
            s.start.push_attribute(("pass", pass));
            self.root.children.push(Node::Elem(s));
        }
        let settings = self
            .root
            .elems_mut()
            .find(|e| e.local() == "settings" && e.attr("pass").as_deref() == Some(pass))
            .expect("found or made");
        let has = settings
            .elems_mut()
            .any(|e| e.local() == "component" && e.attr("name").as_deref() == Some(name));
        if !has {
            let mut c = Elem::new("component");
            for (k, v) in [
                ("name", name),
                ("processorArchitecture", &arch),
                ("publicKeyToken", "31bf3856ad364e35"),
                ("language", "neutral"),
                ("versionScope", "nonSxS"),
            ] {
                c.start.push_attribute((k, v));
            }
            settings.children.push(Node::Elem(c));
        }
        settings
            .elems_mut()
            .find(|e| e.local() == "component" && e.attr("name").as_deref() == Some(name))
            .expect("found or made")
    }

    /// Sets `path` (elements below the component) wherever the file has it, in any pass;
    /// where it has it nowhere, it is made in the specialize pass. Returns whether anything
    /// changed.
    fn set(&mut self, component: &str, path: &[&str], value: &str) -> bool {
        let mut changed = false;
        let mut found = false;
        for s in self.root.elems_mut().filter(|e| e.local() == "settings") {
            for c in s.elems_mut().filter(|c| {
                c.local() == "component" && c.attr("name").as_deref() == Some(component)
            }) {
                if let Some(e) = existing(c, path) {
                    found = true;
                    if e.text() != value || e.children.is_empty() {
                        e.set_text(value);
                        changed = true;
                    }
                }
            }
        }
        if !found {
            changed |= set_path(self.component("specialize", component), path, value);
        }
        changed
    }
}

/// The element at `path` below `e`, if there is one.
fn existing<'a>(mut e: &'a mut Elem, path: &[&str]) -> Option<&'a mut Elem> {
    for p in path {
        e = e.elems_mut().find(|c| c.local() == *p)?;
    }
    Some(e)
}

fn set_path(mut e: &mut Elem, path: &[&str], value: &str) -> bool {
    for p in path {
        e = e.child(p);
    }
    if e.text() == value && !e.children.is_empty() {
        return false;
    }
    e.set_text(value);
    true
}

/// Edits an answer file's bytes: the computer name, then each `unattend:` variable. Returns
/// the new bytes and what changed.
pub(crate) fn edit(
    bytes: &[u8],
    hostname: &str,
    vars: &proto::template::Vars,
) -> anyhow::Result<(Vec<u8>, Vec<String>)> {
    let mut a = Answer::parse(bytes)?;
    let mut done = Vec::new();
    // Windows takes at most 15 characters for a computer name.
    let name: String = hostname.chars().take(15).collect();
    if set_path(
        a.component("specialize", SHELL_SETUP),
        &["ComputerName"],
        &name,
    ) {
        done.push(format!("ComputerName {name}"));
    }
    for (k, v) in vars {
        let Some(spec) = k.strip_prefix("unattend:") else {
            continue;
        };
        let parts: Vec<&str> = spec.split('/').collect();
        if parts.len() < 2 || parts.iter().any(|p| p.is_empty()) {
            bail!("variable {k}: unattend:COMPONENT/ELEMENT[/ELEMENT...]");
        }
        if a.set(parts[0], &parts[1..], v) {
            done.push(format!("{} {v}", parts[1..].join("/")));
        }
    }
    Ok((a.write(), done))
}

/// Personalizes the Windows system at `root`: every answer file, and the first-boot script.
/// Returns what changed, or says that the image was not generalized.
pub(crate) fn personalize(
    root: &Path,
    hostname: &str,
    vars: &proto::template::Vars,
    first_boot: Option<&str>,
) -> anyhow::Result<Vec<String>> {
    let files = answer_files(root);
    if files.is_empty() {
        return Ok(vec![
            "Windows not generalized (no sysprep answer file in Windows\\Panther or \
             Windows\\System32\\Sysprep): nothing changed"
                .into(),
        ]);
    }
    let mut done = Vec::new();
    for f in &files {
        let shown = f
            .strip_prefix(root)
            .unwrap_or(f)
            .to_string_lossy()
            .replace('/', "\\");
        let bytes = std::fs::read(f).with_context(|| format!("reading {shown}"))?;
        let (out, changed) =
            edit(&bytes, hostname, vars).with_context(|| format!("the answer file {shown}"))?;
        if out != bytes {
            std::fs::write(f, &out).with_context(|| format!("writing {shown}"))?;
        }
        done.extend(changed.into_iter().map(|c| format!("{shown}: {c}")));
    }
    if let Some(script) = first_boot {
        let windows = find(root, &["Windows"]).context("no Windows folder")?;
        let mut at = windows;
        for part in ["Setup", "Scripts"] {
            at = match find(&at, &[part]) {
                Some(p) => p,
                None => {
                    let p = at.join(part);
                    std::fs::create_dir(&p).with_context(|| format!("creating {}", p.display()))?;
                    p
                }
            };
        }
        let path =
            find(&at, &["SetupComplete.cmd"]).unwrap_or_else(|| at.join("SetupComplete.cmd"));
        let crlf = script.replace("\r\n", "\n").replace('\n', "\r\n");
        std::fs::write(&path, crlf)
            .context("writing Windows\\Setup\\Scripts\\SetupComplete.cmd")?;
        done.push("first-boot script (Windows\\Setup\\Scripts\\SetupComplete.cmd)".into());
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYSPREPPED: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<unattend xmlns="urn:schemas-microsoft-com:unattend">
    <!-- made by the lab's image builder -->
    <settings pass="specialize">
        <component name="Microsoft-Windows-Shell-Setup" processorArchitecture="amd64" publicKeyToken="31bf3856ad364e35" language="neutral" versionScope="nonSxS" xmlns:wcm="http://schemas.microsoft.com/WMIConfig/2002/State">
            <ComputerName>GOLDEN</ComputerName>
            <TimeZone>W. Europe Standard Time</TimeZone>
        </component>
    </settings>
    <settings pass="oobeSystem">
        <component name="Microsoft-Windows-Shell-Setup" processorArchitecture="amd64" publicKeyToken="31bf3856ad364e35" language="neutral" versionScope="nonSxS">
            <OOBE><HideEULAPage>true</HideEULAPage></OOBE>
            <RegisteredOwner>R&amp;D lab</RegisteredOwner>
        </component>
    </settings>
</unattend>
"#;

    fn vars(kv: &[(&str, &str)]) -> proto::template::Vars {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_computer_name_is_set_and_everything_else_is_kept() {
        let (out, done) = edit(SYSPREPPED.as_bytes(), "pc-07", &vars(&[])).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert_eq!(out, SYSPREPPED.replace(">GOLDEN<", ">pc-07<"));
        assert_eq!(done, vec!["ComputerName pc-07"]);
        // Once more: nothing to change.
        let (again, done) = edit(out.as_bytes(), "pc-07", &vars(&[])).unwrap();
        assert_eq!(String::from_utf8(again).unwrap(), out);
        assert!(done.is_empty());
    }

    #[test]
    fn variables_set_values_and_missing_parts_are_made() {
        let v = vars(&[
            (
                "unattend:Microsoft-Windows-Shell-Setup/RegisteredOwner",
                "<Lab> 4",
            ),
            (
                "unattend:Microsoft-Windows-International-Core/UILanguage",
                "de-DE",
            ),
            ("room", "4"),
        ]);
        let (out, done) = edit(SYSPREPPED.as_bytes(), "a-very-long-hostname", &v).unwrap();
        let out = String::from_utf8(out).unwrap();
        // At most 15 characters, as Windows takes.
        assert!(
            out.contains("<ComputerName>a-very-long-hos</ComputerName>"),
            "{out}"
        );
        // Set where the file has it (the oobeSystem pass), not added elsewhere.
        assert_eq!(
            out.matches("<RegisteredOwner>&lt;Lab&gt; 4</RegisteredOwner>")
                .count(),
            1,
            "{out}"
        );
        assert!(!out.contains("R&amp;D lab"), "{out}");
        assert!(out.contains("<OOBE><HideEULAPage>true</HideEULAPage></OOBE>\n            <RegisteredOwner>&lt;Lab&gt;"), "{out}");
        // A component nowhere in the file goes into the specialize pass.
        assert!(
            out.contains(
                "<component name=\"Microsoft-Windows-International-Core\" \
                 processorArchitecture=\"amd64\" publicKeyToken=\"31bf3856ad364e35\" \
                 language=\"neutral\" versionScope=\"nonSxS\"><UILanguage>de-DE</UILanguage>\
                 </component></settings>"
            ),
            "{out}"
        );
        assert!(out.contains("<!-- made by the lab's image builder -->"));
        assert_eq!(done.len(), 3, "{done:?}");
        Answer::parse(out.as_bytes()).unwrap();
    }

    #[test]
    fn an_answer_file_without_a_specialize_pass_gets_one() {
        let min = "\u{feff}<unattend xmlns=\"urn:schemas-microsoft-com:unattend\"><settings pass=\"oobeSystem\"/></unattend>";
        let (out, _) = edit(min.as_bytes(), "pc-1", &vars(&[])).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(out.starts_with('\u{feff}'));
        assert!(out.contains("<settings pass=\"oobeSystem\"/><settings pass=\"specialize\"><component name=\"Microsoft-Windows-Shell-Setup\""), "{out}");
        assert!(out.contains("<ComputerName>pc-1</ComputerName>"), "{out}");
    }

    #[test]
    fn a_malformed_answer_file_is_refused_with_the_reason() {
        for (bad, why) in [
            ("<unattend><settings></unattend>", "malformed XML"),
            ("<unattend><settings>", "never closed"),
            ("<other/>", "not <unattend>"),
            ("", "no root element"),
        ] {
            let e = edit(bad.as_bytes(), "pc", &vars(&[])).unwrap_err();
            assert!(format!("{e:#}").contains(why), "{bad}: {e:#}");
        }
        let e = edit(
            SYSPREPPED.as_bytes(),
            "pc",
            &vars(&[("unattend:OnlyComponent", "x")]),
        )
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("unattend:COMPONENT/ELEMENT"),
            "{e:#}"
        );
    }
}
