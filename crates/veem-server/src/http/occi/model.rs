//! The OCCI model veem serves (GFD.221 core, GFD.224 infrastructure): its categories (kinds,
//! mixins, actions) with their attributes, the `resource_tpl` sizes, and the entities that the
//! renderings write out. Nothing here knows HTTP or the core.

pub const CORE: &str = "http://schemas.ogf.org/occi/core#";
pub const INFRA: &str = "http://schemas.ogf.org/occi/infrastructure#";
pub const COMPUTE_ACTION: &str = "http://schemas.ogf.org/occi/infrastructure/compute/action#";
pub const STORAGE_ACTION: &str = "http://schemas.ogf.org/occi/infrastructure/storage/action#";
pub const NETWORK_ACTION: &str = "http://schemas.ogf.org/occi/infrastructure/network/action#";
pub const NETWORK_MIXIN: &str = "http://schemas.ogf.org/occi/infrastructure/network#";
pub const NETIF_MIXIN: &str = "http://schemas.ogf.org/occi/infrastructure/networkinterface#";
/// The scheme of the `os_tpl` mixins veem makes, one per image the caller sees.
pub const OS_TPL: &str = "http://schemas.veem.dev/occi/os_tpl#";
/// The scheme of the `resource_tpl` mixins: the sizes of [`SIZES`].
pub const RESOURCE_TPL: &str = "http://schemas.veem.dev/occi/resource_tpl#";

/// The sizes offered as `resource_tpl` mixins: (term, cores, memory in GiB). Defined here only.
pub const SIZES: [(&str, u32, f64); 4] = [
    ("small", 1, 1.0),
    ("medium", 2, 4.0),
    ("large", 4, 8.0),
    ("xlarge", 8, 16.0),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Kind,
    Mixin,
    Action,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Kind => "kind",
            Class::Mixin => "mixin",
            Class::Action => "action",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttrType {
    String,
    Number,
}

impl AttrType {
    pub fn as_str(self) -> &'static str {
        match self {
            AttrType::String => "string",
            AttrType::Number => "number",
        }
    }
}

/// An attribute a category defines.
#[derive(Debug, Clone)]
pub struct AttributeDef {
    pub name: &'static str,
    pub kind: AttrType,
    pub mutable: bool,
    pub required: bool,
    /// The values a string may take, when the specification enumerates them.
    pub values: &'static [&'static str],
    pub description: &'static str,
}

const fn attr(
    name: &'static str,
    kind: AttrType,
    mutable: bool,
    description: &'static str,
) -> AttributeDef {
    AttributeDef {
        name,
        kind,
        mutable,
        required: false,
        values: &[],
        description,
    }
}

const fn one_of(
    name: &'static str,
    mutable: bool,
    values: &'static [&'static str],
    description: &'static str,
) -> AttributeDef {
    AttributeDef {
        name,
        kind: AttrType::String,
        mutable,
        required: false,
        values,
        description,
    }
}

/// A kind, mixin or action.
#[derive(Debug, Clone)]
pub struct Category {
    pub scheme: String,
    pub term: String,
    pub class: Class,
    pub title: String,
    /// A kind's parent kind (its `rel` in the text rendering).
    pub parent: Option<String>,
    /// The mixins a mixin depends on (its `rel` in the text rendering).
    pub depends: Vec<String>,
    /// The kinds a mixin applies to.
    pub applies: Vec<String>,
    pub location: Option<String>,
    pub attributes: Vec<AttributeDef>,
    /// The identifiers of its actions.
    pub actions: Vec<String>,
}

impl Category {
    /// scheme + term, the category's identifier.
    pub fn id(&self) -> String {
        format!("{}{}", self.scheme, self.term)
    }

    fn new(scheme: &str, term: &str, class: Class, title: &str) -> Self {
        Self {
            scheme: scheme.to_owned(),
            term: term.to_owned(),
            class,
            title: title.to_owned(),
            parent: None,
            depends: Vec::new(),
            applies: Vec::new(),
            location: None,
            attributes: Vec::new(),
            actions: Vec::new(),
        }
    }

    fn kind(term: &str, title: &str, parent: &str, location: Option<&str>) -> Self {
        let scheme = if ["entity", "resource", "link"].contains(&term) {
            CORE
        } else {
            INFRA
        };
        Self {
            parent: (!parent.is_empty()).then(|| parent.to_owned()),
            location: location.map(str::to_owned),
            ..Self::new(scheme, term, Class::Kind, title)
        }
    }

    fn action(scheme: &str, term: &str, title: &str, attributes: Vec<AttributeDef>) -> Self {
        Self {
            attributes,
            ..Self::new(scheme, term, Class::Action, title)
        }
    }

    pub fn mixin(scheme: &str, term: &str, title: &str, location: &str) -> Self {
        Self {
            location: Some(location.to_owned()),
            ..Self::new(scheme, term, Class::Mixin, title)
        }
    }
}

pub fn id(scheme: &str, term: &str) -> String {
    format!("{scheme}{term}")
}

/// The attributes of every entity (GFD.221 section 4.5.3).
fn entity_attributes() -> Vec<AttributeDef> {
    vec![
        AttributeDef {
            required: true,
            ..attr(
                "occi.core.id",
                AttrType::String,
                false,
                "A unique identifier of the entity",
            )
        },
        attr(
            "occi.core.title",
            AttrType::String,
            true,
            "The display name of the entity",
        ),
    ]
}

/// The categories of the model veem implements, the dynamic mixins aside; made once.
pub fn static_categories() -> &'static [Category] {
    static MODEL: std::sync::LazyLock<Vec<Category>> = std::sync::LazyLock::new(make_model);
    &MODEL
}

fn make_model() -> Vec<Category> {
    let mut entity = Category::kind("entity", "Entity", "", None);
    entity.attributes = entity_attributes();
    let mut resource = Category::kind("resource", "Resource", &id(CORE, "entity"), None);
    resource.attributes = vec![attr(
        "occi.core.summary",
        AttrType::String,
        true,
        "A summarizing description of the resource",
    )];
    let mut link = Category::kind("link", "Link", &id(CORE, "entity"), None);
    link.attributes = vec![
        AttributeDef {
            required: true,
            ..attr(
                "occi.core.source",
                AttrType::String,
                true,
                "The location of the source resource",
            )
        },
        AttributeDef {
            required: true,
            ..attr(
                "occi.core.target",
                AttrType::String,
                true,
                "The location of the target resource",
            )
        },
    ];
    let resource_id = id(CORE, "resource");
    let link_id = id(CORE, "link");

    let mut compute = Category::kind(
        "compute",
        "Compute Resource",
        &resource_id,
        Some("/compute/"),
    );
    compute.attributes = vec![
        one_of(
            "occi.compute.architecture",
            true,
            &["x86", "x64"],
            "CPU architecture of the instance",
        ),
        attr(
            "occi.compute.cores",
            AttrType::Number,
            true,
            "Number of virtual CPU cores assigned to the instance",
        ),
        attr(
            "occi.compute.share",
            AttrType::Number,
            true,
            "Relative number of CPU shares for the instance",
        ),
        attr(
            "occi.compute.hostname",
            AttrType::String,
            true,
            "Fully Qualified DNS hostname for the instance",
        ),
        attr(
            "occi.compute.speed",
            AttrType::Number,
            true,
            "CPU Clock frequency (speed) in gigahertz",
        ),
        attr(
            "occi.compute.memory",
            AttrType::Number,
            true,
            "Maximum RAM in gigabytes allocated to the instance",
        ),
        one_of(
            "occi.compute.state",
            false,
            &["active", "inactive", "suspended", "error"],
            "Current state of the instance",
        ),
        attr(
            "occi.compute.state.message",
            AttrType::String,
            false,
            "Human-readable explanation of the current instance state",
        ),
    ];
    compute.actions = ["start", "stop", "restart", "suspend", "save"]
        .iter()
        .map(|a| id(COMPUTE_ACTION, a))
        .collect();

    let mut storage = Category::kind(
        "storage",
        "Storage Resource",
        &resource_id,
        Some("/storage/"),
    );
    storage.attributes = vec![
        attr(
            "occi.storage.size",
            AttrType::Number,
            true,
            "Storage size of the instance in gigabytes",
        ),
        one_of(
            "occi.storage.state",
            false,
            &["online", "offline", "error"],
            "Current status of the instance",
        ),
        attr(
            "occi.storage.state.message",
            AttrType::String,
            false,
            "Human-readable explanation of the current instance state",
        ),
    ];
    storage.actions = ["online", "offline", "backup", "snapshot", "resize"]
        .iter()
        .map(|a| id(STORAGE_ACTION, a))
        .collect();

    let mut network = Category::kind(
        "network",
        "Network Resource",
        &resource_id,
        Some("/network/"),
    );
    network.attributes = vec![
        attr(
            "occi.network.vlan",
            AttrType::Number,
            true,
            "802.1q VLAN identifier",
        ),
        attr(
            "occi.network.label",
            AttrType::String,
            true,
            "Tag based VLANs",
        ),
        one_of(
            "occi.network.state",
            false,
            &["active", "inactive", "error"],
            "Current state of the instance",
        ),
        attr(
            "occi.network.state.message",
            AttrType::String,
            false,
            "Human-readable explanation of the current instance state",
        ),
    ];
    network.actions = ["up", "down"]
        .iter()
        .map(|a| id(NETWORK_ACTION, a))
        .collect();

    let mut storagelink = Category::kind(
        "storagelink",
        "Storage Link",
        &link_id,
        Some("/storagelink/"),
    );
    storagelink.attributes = vec![
        attr(
            "occi.storagelink.deviceid",
            AttrType::String,
            true,
            "Device identifier as defined by the OCCI service provider",
        ),
        attr(
            "occi.storagelink.mountpoint",
            AttrType::String,
            true,
            "Point to where the storage is mounted in the guest OS",
        ),
        one_of(
            "occi.storagelink.state",
            false,
            &["active", "inactive", "error"],
            "Current status of the instance",
        ),
        attr(
            "occi.storagelink.state.message",
            AttrType::String,
            false,
            "Human-readable explanation of the current instance state",
        ),
    ];

    let mut networkinterface = Category::kind(
        "networkinterface",
        "Network Interface",
        &link_id,
        Some("/networkinterface/"),
    );
    networkinterface.attributes = vec![
        attr(
            "occi.networkinterface.interface",
            AttrType::String,
            false,
            "Identifier that relates the link to the link's device interface",
        ),
        attr(
            "occi.networkinterface.mac",
            AttrType::String,
            true,
            "MAC address associated with the link's device interface",
        ),
        one_of(
            "occi.networkinterface.state",
            false,
            &["active", "inactive", "error"],
            "Current status of the instance",
        ),
        attr(
            "occi.networkinterface.state.message",
            AttrType::String,
            false,
            "Human-readable explanation of the current instance state",
        ),
    ];

    let mut ipnetwork = Category::mixin(
        NETWORK_MIXIN,
        "ipnetwork",
        "IP Networking Mixin",
        "/mixin/ipnetwork/",
    );
    ipnetwork.applies = vec![id(INFRA, "network")];
    ipnetwork.attributes = vec![
        attr(
            "occi.network.address",
            AttrType::String,
            true,
            "Internet Protocol (IP) network address (e.g. 192.168.0.1/24)",
        ),
        attr(
            "occi.network.gateway",
            AttrType::String,
            true,
            "Internet Protocol (IP) network address",
        ),
        one_of(
            "occi.network.allocation",
            true,
            &["dynamic", "static"],
            "Address allocation mechanism",
        ),
    ];
    let mut ipnetworkinterface = Category::mixin(
        NETIF_MIXIN,
        "ipnetworkinterface",
        "IP Network Interface Mixin",
        "/mixin/ipnetworkinterface/",
    );
    ipnetworkinterface.applies = vec![id(INFRA, "networkinterface")];
    ipnetworkinterface.attributes = vec![
        attr(
            "occi.networkinterface.address",
            AttrType::String,
            true,
            "Internet Protocol (IP) network address of the link",
        ),
        attr(
            "occi.networkinterface.gateway",
            AttrType::String,
            true,
            "Internet Protocol (IP) network address",
        ),
        one_of(
            "occi.networkinterface.allocation",
            true,
            &["dynamic", "static"],
            "Address allocation mechanism",
        ),
    ];
    let mut os_tpl = Category::mixin(INFRA, "os_tpl", "OS Template", "/mixin/os_tpl/");
    os_tpl.applies = vec![id(INFRA, "compute")];
    let mut resource_tpl = Category::mixin(
        INFRA,
        "resource_tpl",
        "Resource Template",
        "/mixin/resource_tpl/",
    );
    resource_tpl.applies = vec![id(INFRA, "compute")];

    let method = |values: &'static [&'static str]| {
        vec![one_of(
            "method",
            true,
            values,
            "How the action is carried out",
        )]
    };
    let actions = vec![
        Category::action(
            COMPUTE_ACTION,
            "start",
            "Start the compute instance",
            Vec::new(),
        ),
        Category::action(
            COMPUTE_ACTION,
            "stop",
            "Stop the compute instance",
            method(&["graceful", "acpioff", "poweroff"]),
        ),
        Category::action(
            COMPUTE_ACTION,
            "restart",
            "Restart the compute instance",
            method(&["graceful", "warm", "cold"]),
        ),
        Category::action(
            COMPUTE_ACTION,
            "suspend",
            "Suspend the compute instance",
            method(&["hibernate", "suspend"]),
        ),
        Category::action(COMPUTE_ACTION, "save", "Save the compute instance", {
            let mut a = method(&["hot", "deferred"]);
            a.push(attr(
                "name",
                AttrType::String,
                true,
                "The name of the saved image",
            ));
            a
        }),
        Category::action(STORAGE_ACTION, "online", "Set storage online", Vec::new()),
        Category::action(STORAGE_ACTION, "offline", "Set storage offline", Vec::new()),
        Category::action(STORAGE_ACTION, "backup", "Backup the storage", Vec::new()),
        Category::action(
            STORAGE_ACTION,
            "snapshot",
            "Snapshot the storage",
            Vec::new(),
        ),
        Category::action(
            STORAGE_ACTION,
            "resize",
            "Resize the storage",
            vec![attr(
                "size",
                AttrType::Number,
                true,
                "The new size in gigabytes",
            )],
        ),
        Category::action(NETWORK_ACTION, "up", "Activate the network", Vec::new()),
        Category::action(NETWORK_ACTION, "down", "Deactivate the network", Vec::new()),
    ];
    let mut all = vec![
        entity,
        resource,
        link,
        compute,
        storage,
        network,
        storagelink,
        networkinterface,
        ipnetwork,
        ipnetworkinterface,
        os_tpl,
        resource_tpl,
    ];
    all.extend(actions);
    all
}

/// The `resource_tpl` mixin of a size.
pub fn size_mixin(term: &str, cores: u32, memory_gib: f64) -> Category {
    let mut mixin = Category::mixin(
        RESOURCE_TPL,
        term,
        &format!("{cores} cores, {memory_gib} GiB of memory"),
        &format!("/mixin/resource_tpl/{term}/"),
    );
    mixin.depends = vec![id(INFRA, "resource_tpl")];
    mixin.applies = vec![id(INFRA, "compute")];
    mixin
}

/// The `os_tpl` mixin of an image.
pub fn image_mixin(name: &str) -> Category {
    let mut mixin = Category::mixin(
        OS_TPL,
        name,
        &format!("image {name}"),
        &format!("/mixin/os_tpl/{name}/"),
    );
    mixin.depends = vec![id(INFRA, "os_tpl")];
    mixin.applies = vec![id(INFRA, "compute")];
    mixin
}

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    String(String),
    Number(f64),
    Bool(bool),
}

impl Value {
    /// The text a filter compares: a number as the shortest text that reads back the same.
    pub fn as_text(&self) -> String {
        match self {
            Value::String(s) => s.clone(),
            Value::Number(n) => format_number(*n),
            Value::Bool(b) => b.to_string(),
        }
    }
}

pub fn format_number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

/// A category as an entity names it: enough to write its `Category` line.
#[derive(Debug, Clone, PartialEq)]
pub struct CategoryRef {
    pub scheme: String,
    pub term: String,
    pub class: Class,
    pub title: String,
}

impl CategoryRef {
    pub fn of(category: &Category) -> Self {
        Self {
            scheme: category.scheme.clone(),
            term: category.term.clone(),
            class: category.class,
            title: category.title.clone(),
        }
    }

    pub fn id(&self) -> String {
        id(&self.scheme, &self.term)
    }
}

/// A resource or a link, as the renderings write it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entity {
    pub kind: CategoryRef,
    pub mixins: Vec<CategoryRef>,
    /// Every attribute with a value, `occi.core.id` first.
    pub attributes: Vec<(String, Value)>,
    /// The actions that apply to it now.
    pub actions: Vec<String>,
    /// Its path, e.g. `/compute/vee-00000001`.
    pub location: String,
    /// A resource's links.
    pub links: Vec<Entity>,
    /// A link's source and target: (location, kind identifier).
    pub source: Option<(String, String)>,
    pub target: Option<(String, String)>,
}

impl Entity {
    pub fn attribute(&self, name: &str) -> Option<&Value> {
        self.attributes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    /// Whether its kind, or one of its mixins, is the category `id`.
    pub fn has_category(&self, id: &str) -> bool {
        self.kind.id() == id || self.mixins.iter().any(|m| m.id() == id)
    }
}
