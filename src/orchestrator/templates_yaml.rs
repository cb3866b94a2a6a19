//! Template YAML documents (`apiVersion: sandboxd.io/v1`): reading an import body into
//! templates and writing an export. Pure and synchronous: it knows no store, no HTTP and no
//! spec rules (ttl ranges, name syntax); the service validates each item, by its index.
//!
//! A document is a `kind: Template`, a `kind: TemplateList` with `items`, or a stream of
//! either separated by `---`. JSON is YAML, so a JSON body reads too. Reading uses
//! serde-saphyr with a budget (nodes, depth, aliases, scalar bytes), so a billion-laughs
//! document is refused instead of expanded; duplicate keys, tabs in indentation, YAML 1.1
//! booleans (`yes`) and unknown fields are errors carrying `line:column`.
//!
//! Writing is canonical: templates sorted by name, fields in one fixed order, absent options
//! and empty tags omitted, and no timestamps except `versions[].createdAt`. So export →
//! import into an empty server → export gives the same bytes.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_saphyr::{Localizer, Location, Spanned};

use super::error::Error;
use crate::wire::templates::TemplateSpec;

/// The only `apiVersion` there is.
pub const API_VERSION: &str = "sandboxd.io/v1";
/// `kind` of a document holding one template.
const KIND_TEMPLATE: &str = "Template";
/// `kind` of a document holding `items`.
const KIND_LIST: &str = "TemplateList";

/// At most this many YAML nodes in a body (a 4 MiB body of real templates has far fewer).
const MAX_NODES: usize = 100_000;
/// At most this deep (mappings and sequences); a template is about eight levels deep.
const MAX_DEPTH: usize = 64;
/// At most this many anchors and aliases: enough to share an `env` block, too few to amplify.
const MAX_ALIASES: usize = 1_000;
/// At most this many bytes of scalar text, counting text replayed through aliases: twice
/// the largest body the HTTP layer accepts.
const MAX_SCALAR_BYTES: usize = 8 << 20;

/// One template read from an import document.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportItem {
    /// Position among all the body's templates, from 0 (`FailedItem::index`).
    pub index: usize,
    /// `metadata.name`, never empty (its syntax is the service's to check).
    pub name: String,
    /// `metadata.displayName`.
    pub display_name: Option<String>,
    /// `metadata.description`.
    pub description: Option<String>,
    /// `metadata.tags`; `None` when absent.
    pub tags: Option<Vec<String>>,
    /// `metadata.author`.
    pub author: Option<String>,
    /// `metadata.isPublic`.
    pub is_public: Option<bool>,
    /// `spec`: the template's latest spec, read but not validated.
    pub spec: TemplateSpec,
}

/// A whole import body, read.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportDocument {
    /// The templates, in document order.
    pub items: Vec<ImportItem>,
    /// What the import ignores (`ImportResult::warnings`), e.g.
    /// `item 2 (web): 'versions' history is ignored on import`.
    pub warnings: Vec<String>,
}

/// A line and column in the body, both from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Line, from 1.
    pub line: u64,
    /// Column, from 1.
    pub column: u64,
}

impl Position {
    fn of(location: Location) -> Self {
        Self {
            line: location.line(),
            column: location.column(),
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// Why an import body cannot be read; nothing of it may be applied. Each message starts
/// with `line:column` where there is one (400 `TEMPLATE::IMPORT_INVALID`).
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// Not YAML, over the budget, a duplicate key, an unknown or missing field, or a value of
    /// the wrong type.
    #[error("{}", yaml_message(.0))]
    Yaml(#[source] serde_saphyr::Error),
    /// `apiVersion` is not `sandboxd.io/v1`.
    #[error("{at}: apiVersion must be {API_VERSION}, not {found:?}")]
    ApiVersion {
        /// Where.
        at: Position,
        /// What the document says.
        found: String,
    },
    /// `kind` is neither `Template` nor `TemplateList` (or, for a list item, not `Template`).
    #[error("{at}: kind must be {expected}, not {found:?}")]
    Kind {
        /// Where.
        at: Position,
        /// What is allowed there.
        expected: &'static str,
        /// What the document says.
        found: String,
    },
    /// A `Template` lacks `metadata` or `spec`, or has `items`; a `TemplateList` lacks `items`
    /// or has fields of a `Template`.
    #[error("{at}: a {kind} {problem}")]
    Shape {
        /// Where (the document's `kind`).
        at: Position,
        /// The document's kind.
        kind: &'static str,
        /// What is wrong, e.g. `needs spec`.
        problem: &'static str,
    },
    /// `metadata.name` is empty.
    #[error("{at}: metadata.name must not be empty")]
    EmptyName {
        /// Where.
        at: Position,
    },
    /// Two templates of the body have the same name.
    #[error("{at}: template {name:?} appears twice in the document (first at {first})")]
    DuplicateName {
        /// The name.
        name: String,
        /// The second occurrence.
        at: Position,
        /// The first.
        first: Position,
    },
    /// The body holds no document at all.
    #[error("the body holds no template document")]
    Empty,
}

impl From<ParseError> for Error {
    fn from(error: ParseError) -> Self {
        Error::ImportInvalid(error.to_string())
    }
}

/// Why an export could not be written (a serializer failure; not expected for these types).
#[derive(Debug, thiserror::Error)]
#[error("writing the YAML export failed")]
pub struct ExportError(#[source] serde_saphyr::SerializeError);

/// A template to export, as the store has it.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportTemplate {
    /// Unique name.
    pub name: String,
    /// Display name.
    pub display_name: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// Tags (omitted when empty).
    pub tags: Vec<String>,
    /// Author (omitted when empty).
    pub author: String,
    /// Readable and usable by every user.
    pub is_public: bool,
    /// The latest version's spec.
    pub spec: TemplateSpec,
    /// Every version, in any order; written only when all versions are asked for.
    pub versions: Vec<ExportVersion>,
}

/// One version of an exported template.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportVersion {
    /// 1, 2, …
    pub version: u32,
    /// Why it was made.
    pub changelog: Option<String>,
    /// When (RFC 3339), written as given.
    pub created_at: String,
    /// Its spec.
    pub spec: TemplateSpec,
}

/// Reads an import body: every template of every document, or the first error. Templates
/// are not validated beyond their shape; `versions` are read (so typos in them are caught)
/// and then ignored with a warning.
pub fn parse(text: &str) -> Result<ImportDocument, ParseError> {
    let documents: Vec<DocumentIn> =
        serde_saphyr::from_multiple_with_options(text, read_options()).map_err(ParseError::Yaml)?;
    if documents.is_empty() {
        return Err(ParseError::Empty);
    }
    let mut items = Vec::new();
    let mut warnings = Vec::new();
    let mut seen: HashMap<String, Position> = HashMap::new();
    for document in documents {
        for template in document.into_templates()? {
            let TemplateIn {
                metadata,
                spec,
                versions,
            } = template;
            let name_at = Position::of(metadata.name.referenced);
            let name = metadata.name.value;
            if name.is_empty() {
                return Err(ParseError::EmptyName { at: name_at });
            }
            if let Some(&first) = seen.get(&name) {
                return Err(ParseError::DuplicateName {
                    name,
                    at: name_at,
                    first,
                });
            }
            seen.insert(name.clone(), name_at);
            let index = items.len();
            if versions.is_some() {
                warnings.push(format!(
                    "item {index} ({name}): 'versions' history is ignored on import"
                ));
            }
            items.push(ImportItem {
                index,
                name,
                display_name: metadata.display_name,
                description: metadata.description,
                tags: metadata.tags,
                author: metadata.author,
                is_public: metadata.is_public,
                spec,
            });
        }
    }
    Ok(ImportDocument { items, warnings })
}

/// Writes templates as one document: `kind: Template` for exactly one, else a
/// `kind: TemplateList` (sorted by name). `all_versions` adds each template's `versions`,
/// oldest first.
pub fn export(templates: &[ExportTemplate], all_versions: bool) -> Result<String, ExportError> {
    let mut sorted: Vec<&ExportTemplate> = templates.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let items: Vec<TemplateOut<'_>> = sorted
        .into_iter()
        .map(|template| TemplateOut::new(template, all_versions))
        .collect();
    let written = if let [only] = items.as_slice() {
        serde_saphyr::to_string(only)
    } else {
        serde_saphyr::to_string(&ListOut {
            api_version: API_VERSION,
            kind: KIND_LIST,
            items,
        })
    };
    written.map_err(ExportError)
}

/// The reader's settings: the budget, duplicate keys refused, only `true`/`false` as
/// booleans, unknown tags refused, and plain errors (the message gets `line:column`).
fn read_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_nodes: MAX_NODES,
            max_depth: MAX_DEPTH,
            max_aliases: MAX_ALIASES,
            max_anchors: MAX_ALIASES,
            max_total_scalar_bytes: MAX_SCALAR_BYTES,
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: MAX_NODES,
        },
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::Error,
        strict_booleans: true,
        reject_unsupported_tags: true,
        with_snippet: false,
    }
}

/// Puts the location first, `line:column: message`, instead of serde-saphyr's
/// `message at line L, column C`.
struct LineColumnFirst;

impl Localizer for LineColumnFirst {
    fn attach_location<'a>(&self, base: Cow<'a, str>, location: Location) -> Cow<'a, str> {
        if location == Location::UNKNOWN {
            base
        } else {
            Cow::Owned(format!("{}: {base}", Position::of(location)))
        }
    }
}

/// A reader error as one line for a client: serde-saphyr's user-facing wording (no advice
/// about its options), located.
fn yaml_message(error: &serde_saphyr::Error) -> String {
    error.render_with_formatter(&serde_saphyr::UserMessageFormatter.with_localizer(&LineColumnFirst))
}

/// One document of the stream, either kind; which fields it may have depends on `kind`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DocumentIn {
    api_version: Spanned<String>,
    kind: Spanned<String>,
    #[serde(default)]
    metadata: Option<MetadataIn>,
    #[serde(default)]
    spec: Option<TemplateSpec>,
    #[serde(default)]
    versions: Option<Vec<VersionIn>>,
    #[serde(default)]
    items: Option<Vec<ItemIn>>,
}

/// A `TemplateList` item: a `Template` whose `apiVersion` and `kind` may be left out.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ItemIn {
    #[serde(default)]
    api_version: Option<Spanned<String>>,
    #[serde(default)]
    kind: Option<Spanned<String>>,
    metadata: MetadataIn,
    spec: TemplateSpec,
    #[serde(default)]
    versions: Option<Vec<VersionIn>>,
}

/// `metadata` of a template.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MetadataIn {
    name: Spanned<String>,
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    author: Option<String>,
    #[serde(default)]
    is_public: Option<bool>,
}

/// One entry of `versions`: read so that it is checked, then ignored.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[expect(dead_code, reason = "history is checked for shape, not imported")]
struct VersionIn {
    version: u32,
    #[serde(default)]
    changelog: Option<String>,
    #[serde(default)]
    created_at: Option<String>,
    spec: TemplateSpec,
}

/// A template of the body, whichever kind of document it came in.
struct TemplateIn {
    metadata: MetadataIn,
    spec: TemplateSpec,
    versions: Option<Vec<VersionIn>>,
}

impl DocumentIn {
    /// The document's templates, after checking `apiVersion`, `kind` and which fields that
    /// kind may have.
    fn into_templates(self) -> Result<Vec<TemplateIn>, ParseError> {
        check_api_version(&self.api_version)?;
        let at = Position::of(self.kind.referenced);
        let shape = |kind, problem| ParseError::Shape { at, kind, problem };
        match self.kind.value.as_str() {
            KIND_TEMPLATE => {
                if self.items.is_some() {
                    return Err(shape(KIND_TEMPLATE, "has no items (use kind TemplateList)"));
                }
                let metadata = self
                    .metadata
                    .ok_or_else(|| shape(KIND_TEMPLATE, "needs metadata"))?;
                let spec = self.spec.ok_or_else(|| shape(KIND_TEMPLATE, "needs spec"))?;
                Ok(vec![TemplateIn {
                    metadata,
                    spec,
                    versions: self.versions,
                }])
            }
            KIND_LIST => {
                if self.metadata.is_some() || self.spec.is_some() || self.versions.is_some() {
                    return Err(shape(KIND_LIST, "has only items, not metadata, spec or versions"));
                }
                let items = self.items.ok_or_else(|| shape(KIND_LIST, "needs items"))?;
                items.into_iter().map(ItemIn::into_template).collect()
            }
            other => Err(ParseError::Kind {
                at,
                expected: "Template or TemplateList",
                found: other.to_owned(),
            }),
        }
    }
}

impl ItemIn {
    fn into_template(self) -> Result<TemplateIn, ParseError> {
        if let Some(api_version) = &self.api_version {
            check_api_version(api_version)?;
        }
        if let Some(kind) = self.kind.filter(|kind| kind.value != KIND_TEMPLATE) {
            return Err(ParseError::Kind {
                at: Position::of(kind.referenced),
                expected: KIND_TEMPLATE,
                found: kind.value,
            });
        }
        Ok(TemplateIn {
            metadata: self.metadata,
            spec: self.spec,
            versions: self.versions,
        })
    }
}

fn check_api_version(api_version: &Spanned<String>) -> Result<(), ParseError> {
    if api_version.value == API_VERSION {
        Ok(())
    } else {
        Err(ParseError::ApiVersion {
            at: Position::of(api_version.referenced),
            found: api_version.value.clone(),
        })
    }
}

/// An exported `TemplateList`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ListOut<'a> {
    api_version: &'static str,
    kind: &'static str,
    items: Vec<TemplateOut<'a>>,
}

/// An exported `Template`, alone or as a list item.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TemplateOut<'a> {
    api_version: &'static str,
    kind: &'static str,
    metadata: MetadataOut<'a>,
    spec: &'a TemplateSpec,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    versions: Vec<VersionOut<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MetadataOut<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    display_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    tags: &'a [String],
    #[serde(skip_serializing_if = "str::is_empty")]
    author: &'a str,
    is_public: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct VersionOut<'a> {
    version: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    changelog: Option<&'a str>,
    created_at: &'a str,
    spec: &'a TemplateSpec,
}

impl<'a> TemplateOut<'a> {
    fn new(template: &'a ExportTemplate, all_versions: bool) -> Self {
        let mut versions: Vec<VersionOut<'a>> = if all_versions {
            template
                .versions
                .iter()
                .map(|version| VersionOut {
                    version: version.version,
                    changelog: version.changelog.as_deref(),
                    created_at: &version.created_at,
                    spec: &version.spec,
                })
                .collect()
        } else {
            Vec::new()
        };
        versions.sort_by_key(|version| version.version);
        Self {
            api_version: API_VERSION,
            kind: KIND_TEMPLATE,
            metadata: MetadataOut {
                name: &template.name,
                display_name: template.display_name.as_deref(),
                description: template.description.as_deref(),
                tags: &template.tags,
                author: &template.author,
                is_public: template.is_public,
            },
            spec: &template.spec,
            versions,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::wire::templates::{
        ExecProbe, HttpGetProbe, ReadinessProbe, SpecResources, TcpProbe, TemplateFile,
    };

    /// The parse error's message, for a body that must be refused.
    fn refused(body: &str) -> String {
        match parse(body) {
            Ok(document) => panic!("accepted: {document:?}"),
            Err(error) => error.to_string(),
        }
    }

    fn spec(image: &str) -> TemplateSpec {
        TemplateSpec {
            image: image.to_owned(),
            ..TemplateSpec::default()
        }
    }

    fn template(name: &str, image: &str) -> ExportTemplate {
        ExportTemplate {
            name: name.to_owned(),
            display_name: None,
            description: None,
            tags: Vec::new(),
            author: String::new(),
            is_public: true,
            spec: spec(image),
            versions: Vec::new(),
        }
    }

    const SINGLE: &str = "\
apiVersion: sandboxd.io/v1
kind: Template
metadata:
  name: python-data-science
  displayName: Python DS
  tags: [python, data]
  author: alice
  isPublic: false
spec:
  image: python:3.11-slim
  resources: {cpu: \"1\", memory: 1Gi}
  ttl: 3600
  env: {A: 1}
  startupScript: |
    pip install -r /workspace/req.txt
";

    #[test]
    fn a_single_template_reads_with_its_metadata_and_spec() {
        let document = parse(SINGLE).unwrap();
        assert!(document.warnings.is_empty());
        let [item] = document.items.as_slice() else {
            panic!("{document:?}")
        };
        assert_eq!(item.index, 0);
        assert_eq!(item.name, "python-data-science");
        assert_eq!(item.display_name.as_deref(), Some("Python DS"));
        assert_eq!(item.description, None);
        assert_eq!(item.tags, Some(vec!["python".to_owned(), "data".to_owned()]));
        assert_eq!(item.author.as_deref(), Some("alice"));
        assert_eq!(item.is_public, Some(false));
        assert_eq!(item.spec.image, "python:3.11-slim");
        assert_eq!(item.spec.ttl, Some(3600));
        // A plain `1` is the string "1" where the type says string.
        assert_eq!(
            item.spec.env,
            Some(BTreeMap::from([("A".to_owned(), "1".to_owned())]))
        );
        let resources = item.spec.resources.as_ref().unwrap();
        assert_eq!(resources.cpu.as_deref(), Some("1"));
        assert_eq!(
            item.spec.startup_script.as_deref(),
            Some("pip install -r /workspace/req.txt\n")
        );
    }

    #[test]
    fn a_list_and_a_multi_document_stream_number_items_across_documents() {
        let body = "\
apiVersion: sandboxd.io/v1
kind: TemplateList
items:
- apiVersion: sandboxd.io/v1
  kind: Template
  metadata: {name: a}
  spec: {image: alpine}
- metadata: {name: b}
  spec: {image: busybox}
---
apiVersion: sandboxd.io/v1
kind: Template
metadata: {name: c}
spec: {image: debian}
versions:
- {version: 1, changelog: first, createdAt: '2026-01-01T00:00:00Z', spec: {image: debian}}
---
";
        let document = parse(body).unwrap();
        let names: Vec<(usize, &str, &str)> = document
            .items
            .iter()
            .map(|item| (item.index, item.name.as_str(), item.spec.image.as_str()))
            .collect();
        assert_eq!(
            names,
            [(0, "a", "alpine"), (1, "b", "busybox"), (2, "c", "debian")]
        );
        assert_eq!(
            document.warnings,
            ["item 2 (c): 'versions' history is ignored on import"]
        );
    }

    #[test]
    fn a_json_body_reads_as_yaml() {
        let body = r#"{"apiVersion": "sandboxd.io/v1", "kind": "TemplateList", "items": [
  {"apiVersion": "sandboxd.io/v1", "kind": "Template",
   "metadata": {"name": "j", "isPublic": true, "tags": []},
   "spec": {"image": "alpine", "ttl": 120, "command": ["sh", "-c"],
            "network": {"defaultAction": "deny", "egress": [{"action": "allow", "target": "example.org"}]},
            "readinessProbe": {"httpGet": {"port": 8000, "path": "/"}, "periodSeconds": 2}}}]}"#;
        let document = parse(body).unwrap();
        let [item] = document.items.as_slice() else {
            panic!("{document:?}")
        };
        assert_eq!(item.name, "j");
        assert_eq!(item.is_public, Some(true));
        assert_eq!(item.tags, Some(Vec::new()));
        assert_eq!(item.spec.ttl, Some(120));
        assert_eq!(
            item.spec.network,
            Some(serde_json::json!({"defaultAction": "deny",
                "egress": [{"action": "allow", "target": "example.org"}]}))
        );
        let probe = item.spec.readiness_probe.as_ref().unwrap();
        assert_eq!(probe.http_get.as_ref().map(|get| get.port), Some(8000));
    }

    #[test]
    fn an_empty_list_has_no_items_but_an_empty_body_is_refused() {
        let document = parse("apiVersion: sandboxd.io/v1\nkind: TemplateList\nitems: []\n");
        assert_eq!(document.unwrap().items, []);
        assert_eq!(refused(""), "the body holds no template document");
        assert_eq!(refused("# nothing\n---\n"), "the body holds no template document");
    }

    #[test]
    fn a_billion_laughs_document_is_refused_by_the_budget() {
        let mut body = String::from(
            "apiVersion: sandboxd.io/v1\nkind: Template\nmetadata: {name: lol}\nspec:\n  image: x\n  network:\n    a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n",
        );
        for (previous, anchor) in ["a", "b", "c", "d", "e", "f", "g", "h"]
            .iter()
            .zip(["b", "c", "d", "e", "f", "g", "h", "i"])
        {
            let aliases = vec![format!("*{previous}"); 10].join(", ");
            body.push_str(&format!("    {anchor}: &{anchor} [{aliases}]\n"));
        }
        let message = refused(&body);
        assert!(message.contains("too large or too complex"), "{message}");
        // Refused at the anchors whose expansion passes the budget.
        let line: u64 = message.split(':').next().unwrap().parse().unwrap();
        assert!((7..=15).contains(&line), "{message}");
    }

    #[test]
    fn a_duplicate_key_is_refused_at_its_line() {
        let body = "apiVersion: sandboxd.io/v1\nkind: Template\nmetadata: {name: a}\nspec:\n  image: x\n  ttl: 60\n  image: y\n";
        assert_eq!(
            refused(body),
            "7:3: duplicate mapping key `image` is not allowed here"
        );
    }

    #[test]
    fn tabs_and_bad_indentation_are_refused_at_their_line() {
        let tab = "apiVersion: sandboxd.io/v1\nkind: Template\nmetadata: {name: a}\nspec:\n\timage: x\n";
        let message = refused(tab);
        assert!(message.starts_with("5:") && message.contains("tab"), "{message}");

        let deeper = "apiVersion: sandboxd.io/v1\nkind: Template\nmetadata:\n  name: a\n   isPublic: true\nspec: {image: x}\n";
        let message = refused(deeper);
        assert!(message.starts_with("5:"), "{message}");

        let shallower = "apiVersion: sandboxd.io/v1\nkind: Template\nmetadata:\n    name: a\n  isPublic: true\nspec: {image: x}\n";
        let message = refused(shallower);
        assert!(message.starts_with("5:"), "{message}");
    }

    #[test]
    fn an_unknown_field_is_refused_by_name_wherever_it_is() {
        let in_spec = "apiVersion: sandboxd.io/v1\nkind: Template\nmetadata: {name: a}\nspec:\n  image: x\n  startup_scirpt: pip install\n";
        let message = refused(in_spec);
        assert!(
            message.starts_with("6:3: unknown field `startup_scirpt`"),
            "{message}"
        );

        let in_metadata =
            "apiVersion: sandboxd.io/v1\nkind: Template\nmetadata: {name: a, owner: bob}\nspec: {image: x}\n";
        assert!(refused(in_metadata).contains("unknown field `owner`"));

        let at_top =
            "apiVersion: sandboxd.io/v1\nkind: Template\nmetadata: {name: a}\nspec: {image: x}\nstatus: {}\n";
        assert!(refused(at_top).starts_with("5:1: unknown field `status`"));

        let in_versions = "apiVersion: sandboxd.io/v1\nkind: Template\nmetadata: {name: a}\nspec: {image: x}\nversions:\n- {version: 1, spec: {image: x}, author: me}\n";
        assert!(refused(in_versions).contains("unknown field `author`"));
    }

    #[test]
    fn an_item_without_a_name_is_refused() {
        let missing = "apiVersion: sandboxd.io/v1\nkind: TemplateList\nitems:\n- metadata: {isPublic: true}\n  spec: {image: x}\n";
        let message = refused(missing);
        assert!(
            message.starts_with("4:") && message.contains("missing field `name`"),
            "{message}"
        );

        let empty = "apiVersion: sandboxd.io/v1\nkind: Template\nmetadata: {name: ''}\nspec: {image: x}\n";
        assert_eq!(refused(empty), "3:18: metadata.name must not be empty");

        let null = "apiVersion: sandboxd.io/v1\nkind: Template\nmetadata:\n  name:\nspec: {image: x}\n";
        assert!(refused(null).starts_with("4:"));
    }

    #[test]
    fn the_same_name_twice_is_refused_naming_it() {
        let body = "\
apiVersion: sandboxd.io/v1
kind: TemplateList
items:
- metadata: {name: web}
  spec: {image: x}
---
apiVersion: sandboxd.io/v1
kind: Template
metadata: {name: web}
spec: {image: y}
";
        assert_eq!(
            refused(body),
            "9:18: template \"web\" appears twice in the document (first at 4:20)"
        );
    }

    #[test]
    fn api_version_kind_and_shape_are_checked() {
        let version = "apiVersion: sandboxd.io/v2\nkind: Template\nmetadata: {name: a}\nspec: {image: x}\n";
        assert_eq!(
            refused(version),
            "1:13: apiVersion must be sandboxd.io/v1, not \"sandboxd.io/v2\""
        );
        let kind = "apiVersion: sandboxd.io/v1\nkind: Pod\nmetadata: {name: a}\nspec: {image: x}\n";
        assert_eq!(
            refused(kind),
            "2:7: kind must be Template or TemplateList, not \"Pod\""
        );
        let item_kind = "apiVersion: sandboxd.io/v1\nkind: TemplateList\nitems:\n- kind: TemplateList\n  metadata: {name: a}\n  spec: {image: x}\n";
        assert_eq!(
            refused(item_kind),
            "4:9: kind must be Template, not \"TemplateList\""
        );
        let no_kind = "apiVersion: sandboxd.io/v1\nmetadata: {name: a}\nspec: {image: x}\n";
        assert!(refused(no_kind).contains("missing field `kind`"));
        let no_spec = "apiVersion: sandboxd.io/v1\nkind: Template\nmetadata: {name: a}\n";
        assert_eq!(refused(no_spec), "2:7: a Template needs spec");
        let list_with_spec = "apiVersion: sandboxd.io/v1\nkind: TemplateList\nspec: {image: x}\nitems: []\n";
        assert_eq!(
            refused(list_with_spec),
            "2:7: a TemplateList has only items, not metadata, spec or versions"
        );
    }

    #[test]
    fn yaml_1_1_booleans_and_unknown_tags_are_refused() {
        let yes = "apiVersion: sandboxd.io/v1\nkind: Template\nmetadata: {name: a, isPublic: yes}\nspec: {image: x}\n";
        assert!(refused(yes).starts_with("3:31:"));
        let tagged = "apiVersion: sandboxd.io/v1\nkind: Template\nmetadata: {name: a}\nspec: {image: !!python/object x}\n";
        assert!(refused(tagged).starts_with("4:"));
    }

    #[test]
    fn a_parse_error_becomes_import_invalid() {
        let error = Error::from(parse("").unwrap_err());
        assert!(matches!(error, Error::ImportInvalid(ref message) if message.contains("no template")));
        fn send_sync<T: Send + Sync + 'static>() {}
        send_sync::<ParseError>();
        send_sync::<ExportError>();
    }

    #[test]
    fn one_template_exports_as_a_template_in_a_fixed_layout() {
        let mut web = template("web", "nginx:1.27");
        web.display_name = Some("Web".to_owned());
        web.tags = vec!["http".to_owned()];
        web.author = "alice".to_owned();
        web.spec.ttl = Some(600);
        web.spec.env = Some(BTreeMap::from([
            ("B".to_owned(), "true".to_owned()),
            ("A".to_owned(), "1".to_owned()),
        ]));
        web.spec.startup_script = Some("echo one\necho two\n".to_owned());
        web.versions = vec![
            ExportVersion {
                version: 2,
                changelog: None,
                created_at: "2026-02-01T00:00:00Z".to_owned(),
                spec: web.spec.clone(),
            },
            ExportVersion {
                version: 1,
                changelog: Some("first".to_owned()),
                created_at: "2026-01-01T00:00:00Z".to_owned(),
                spec: spec("nginx:1.26"),
            },
        ];
        let latest = "\
apiVersion: sandboxd.io/v1
kind: Template
metadata:
  name: web
  displayName: Web
  tags:
  - http
  author: alice
  isPublic: true
spec:
  image: nginx:1.27
  ttl: 600
  env:
    A: \"1\"
    B: \"true\"
  startupScript: |
    echo one
    echo two
";
        assert_eq!(export(std::slice::from_ref(&web), false).unwrap(), latest);
        let history = "\
versions:
- version: 1
  changelog: first
  createdAt: \"2026-01-01T00:00:00Z\"
  spec:
    image: nginx:1.26
- version: 2
  createdAt: \"2026-02-01T00:00:00Z\"
  spec:
    image: nginx:1.27
    ttl: 600
    env:
      A: \"1\"
      B: \"true\"
    startupScript: |
      echo one
      echo two
";
        let all = export(std::slice::from_ref(&web), true).unwrap();
        assert_eq!(all, format!("{latest}{history}"));
        let document = parse(&all).unwrap();
        assert_eq!(document.items[0].spec, web.spec);
        assert_eq!(document.warnings.len(), 1);
    }

    #[test]
    fn several_templates_export_as_a_list_sorted_by_name() {
        let templates = [template("zeta", "z"), template("alpha", "a")];
        let expected = "\
apiVersion: sandboxd.io/v1
kind: TemplateList
items:
- apiVersion: sandboxd.io/v1
  kind: Template
  metadata:
    name: alpha
    isPublic: true
  spec:
    image: a
- apiVersion: sandboxd.io/v1
  kind: Template
  metadata:
    name: zeta
    isPublic: true
  spec:
    image: z
";
        assert_eq!(export(&templates, false).unwrap(), expected);
        let none = export(&[], false).unwrap();
        assert_eq!(
            none,
            "apiVersion: sandboxd.io/v1\nkind: TemplateList\nitems: []\n"
        );
        assert_eq!(parse(&none).unwrap().items, []);
    }

    /// Text that YAML must quote, escape or block-scalar to carry: indicators, look-alikes of
    /// other types, leading and trailing blanks, line breaks of every kind.
    fn text() -> impl Strategy<Value = String> {
        let awkward = prop::sample::select(vec![
            "true", "no", "null", "~", "0x1F", "1e3", "- ", ": ", " #", "&a", "*a", "!t", "|", ">", "---",
            "...", "'", "\"", "\\", "%", "@", "`", "{", "]", ",", "?", " ", "  ", "\t", "\n", "\n\n", "\r\n",
            "\r", "é", "漢字", "😀", "\u{85}", "\u{2028}", "\u{feff}", "\u{0}", "\u{7f}", "\u{1b}",
        ])
        .prop_map(str::to_owned);
        let piece = prop_oneof!["[a-zA-Z0-9 ._/-]{1,12}", awkward];
        prop_oneof![
            3 => prop::collection::vec(piece, 0..10).prop_map(|pieces| pieces.concat()),
            1 => any::<String>(),
            1 => "[a-z]{81,120}( [a-z]{1,9}){0,20}",
        ]
    }

    fn optional<T: Clone + std::fmt::Debug>(
        value: impl Strategy<Value = T>,
    ) -> impl Strategy<Value = Option<T>> {
        prop::option::of(value)
    }

    fn json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<u64>().prop_map(serde_json::Value::from),
            (-1e300f64..1e300).prop_map(serde_json::Value::from),
            text().prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::btree_map(text(), inner, 0..4)
                    .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
            ]
        })
    }

    fn resources() -> impl Strategy<Value = SpecResources> {
        (
            optional(text()),
            optional(text()),
            optional(text()),
            optional(text()),
        )
            .prop_map(|(cpu, memory, gpu, disk)| SpecResources {
                cpu,
                memory,
                gpu,
                disk,
            })
    }

    fn file() -> impl Strategy<Value = TemplateFile> {
        (text(), text(), optional(text()), optional(text())).prop_map(|(path, content, encoding, mode)| {
            TemplateFile {
                path,
                content,
                encoding,
                mode,
            }
        })
    }

    fn probe() -> impl Strategy<Value = ReadinessProbe> {
        (
            optional(prop::collection::vec(text(), 0..3).prop_map(|command| ExecProbe { command })),
            optional((any::<u16>(), optional(text())).prop_map(|(port, path)| HttpGetProbe { port, path })),
            optional(any::<u16>().prop_map(|port| TcpProbe { port })),
            (
                optional(any::<u64>()),
                optional(any::<u64>()),
                optional(any::<u64>()),
                optional(any::<u64>()),
            ),
        )
            .prop_map(
                |(exec, http_get, tcp_socket, (initial, period, timeout, failures))| ReadinessProbe {
                    exec,
                    http_get,
                    tcp_socket,
                    initial_delay_seconds: initial,
                    period_seconds: period,
                    timeout_seconds: timeout,
                    failure_threshold: failures,
                },
            )
    }

    fn template_spec() -> impl Strategy<Value = TemplateSpec> {
        let argv = || optional(prop::collection::vec(text(), 0..4));
        (
            (
                text(),
                argv(),
                argv(),
                optional(resources()),
                optional(any::<u64>()),
            ),
            (
                optional(prop::collection::btree_map(text(), text(), 0..4)),
                optional(text()),
                optional(any::<u64>()),
                optional(prop::collection::vec(file(), 0..3)),
            ),
            (
                optional(probe()),
                // A top-level JSON null is `network: null`, which reads back as absent.
                optional(json().prop_filter("not null", |value| !value.is_null())),
                optional(text()),
                optional(text()),
                optional(text()),
            ),
        )
            .prop_map(
                |(
                    (image, command, args, resources, ttl),
                    (env, startup_script, startup_timeout, files),
                    (readiness_probe, network, install_command, language, language_version),
                )| TemplateSpec {
                    image,
                    command,
                    args,
                    resources,
                    ttl,
                    env,
                    startup_script,
                    startup_timeout,
                    files,
                    readiness_probe,
                    network,
                    install_command,
                    language,
                    language_version,
                },
            )
    }

    fn export_template() -> impl Strategy<Value = ExportTemplate> {
        (
            "[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?",
            (
                optional(text()),
                optional(text()),
                prop::collection::vec(text(), 0..3),
                text(),
                any::<bool>(),
            ),
            template_spec(),
            prop::collection::vec((optional(text()), text(), template_spec()), 0..3),
        )
            .prop_map(
                |(name, (display_name, description, tags, author, is_public), spec, history)| {
                    let versions = history
                        .into_iter()
                        .enumerate()
                        .map(|(n, (changelog, created_at, spec))| ExportVersion {
                            version: u32::try_from(n + 1).unwrap_or(u32::MAX),
                            changelog,
                            created_at,
                            spec,
                        })
                        .collect();
                    ExportTemplate {
                        name,
                        display_name,
                        description,
                        tags,
                        author,
                        is_public,
                        spec,
                        versions,
                    }
                },
            )
    }

    /// What a server that imported `item` into an empty store would export for it.
    fn as_stored(item: &ImportItem) -> ExportTemplate {
        ExportTemplate {
            name: item.name.clone(),
            display_name: item.display_name.clone(),
            description: item.description.clone(),
            tags: item.tags.clone().unwrap_or_default(),
            author: item.author.clone().unwrap_or_default(),
            is_public: item.is_public.unwrap_or(true),
            spec: item.spec.clone(),
            versions: Vec::new(),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn export_then_import_then_export_is_byte_identical(
            templates in prop::collection::btree_map("[a-z]{1,8}", export_template(), 0..4)
        ) {
            // Unique names, as in the store.
            let templates: Vec<ExportTemplate> = templates
                .into_iter()
                .map(|(prefix, template)| ExportTemplate { name: format!("{prefix}-{}", template.name), ..template })
                .collect();
            for all_versions in [false, true] {
                let exported = export(&templates, all_versions).unwrap();
                let document = parse(&exported)
                    .map_err(|error| TestCaseError::fail(format!("{error}\n{exported}")))?;
                let mut sorted: Vec<&ExportTemplate> = templates.iter().collect();
                sorted.sort_by(|a, b| a.name.cmp(&b.name));
                prop_assert_eq!(document.items.len(), sorted.len());
                for (index, (item, template)) in document.items.iter().zip(&sorted).enumerate() {
                    prop_assert_eq!(item.index, index);
                    prop_assert_eq!(&item.name, &template.name);
                    prop_assert_eq!(&item.display_name, &template.display_name);
                    prop_assert_eq!(&item.description, &template.description);
                    prop_assert_eq!(item.tags.clone().unwrap_or_default(), template.tags.clone());
                    prop_assert_eq!(item.author.clone().unwrap_or_default(), template.author.clone());
                    prop_assert_eq!(item.is_public, Some(template.is_public));
                    prop_assert_eq!(&item.spec, &template.spec, "{}", exported);
                }
                let with_history = sorted.iter().filter(|template| !template.versions.is_empty()).count();
                prop_assert_eq!(document.warnings.len(), if all_versions { with_history } else { 0 });

                let stored: Vec<ExportTemplate> = document.items.iter().map(as_stored).collect();
                let stripped: Vec<ExportTemplate> = templates
                    .iter()
                    .map(|template| ExportTemplate { versions: Vec::new(), ..template.clone() })
                    .collect();
                prop_assert_eq!(export(&stored, false).unwrap(), export(&stripped, false).unwrap());
            }
        }
    }
}
