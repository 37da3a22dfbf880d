// Command hcloracle reads SPIRE server configuration files the way SPIRE's server loads them,
// with the HCL library SPIRE pins (github.com/hashicorp/hcl v1.0.1-vault-7), and prints what
// spire-kms-reconciler takes from them. It is the reference of the daemon's differential test
// (tests/test_hcl_oracle.py): each line of standard input is a JSON request, each line of
// standard output the JSON answer.
//
// What it mirrors of SPIRE's loader (cmd/spire-server/cli/run and pkg/common/catalog):
//   - the file's text, with $VAR and ${VAR} expanded first when expand_env is set (SPIRE's
//     -expandEnv: os.Expand, where "$$" stands for "$");
//   - hcl.Decode into the sections the daemon reads: server.trust_domain and health_checks;
//     the plugins section is kept as an AST node, as SPIRE keeps it;
//   - the plugins: every plugin is named by the first two keys on its path (Type "Name" {...},
//     Type { Name {...} } or Type "Name" plugin_data {...}); a plugin named twice is an error;
//     the section is decoded into a list of maps of maps, and KeyManager "aws_kms" is looked
//     up by its exact names;
//   - the aws_kms plugin's data: plugin_data printed back to HCL text with the library's
//     printer and decoded again, as the plugin decodes its configuration, or the file named
//     by plugin_data_file (read as it is); both at once is an error.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/hashicorp/hcl"
	"github.com/hashicorp/hcl/hcl/ast"
	"github.com/hashicorp/hcl/hcl/printer"
)

type request struct {
	Text      string            `json:"text"`
	ExpandEnv bool              `json:"expand_env"`
	Env       map[string]string `json:"env"`
}

type health struct {
	ListenerEnabled bool   `hcl:"listener_enabled" json:"listener_enabled"`
	BindAddress     string `hcl:"bind_address" json:"bind_address"`
	BindPort        string `hcl:"bind_port" json:"bind_port"`
	ReadyPath       string `hcl:"ready_path" json:"ready_path"`
	LivePath        string `hcl:"live_path" json:"live_path"`
}

type server struct {
	TrustDomain string `hcl:"trust_domain"`
}

type config struct {
	Server       *server  `hcl:"server"`
	Plugins      ast.Node `hcl:"plugins"`
	HealthChecks health   `hcl:"health_checks"`
}

type plugin struct {
	PluginCmd      string   `hcl:"plugin_cmd"`
	PluginArgs     []string `hcl:"plugin_args"`
	PluginChecksum string   `hcl:"plugin_checksum"`
	PluginData     ast.Node `hcl:"plugin_data"`
	PluginDataFile *string  `hcl:"plugin_data_file"`
	Enabled        *bool    `hcl:"enabled"`
}

type awsKMS struct {
	AccessKeyID                string            `hcl:"access_key_id" json:"-"`
	SecretAccessKey            string            `hcl:"secret_access_key" json:"-"`
	Region                     string            `hcl:"region" json:"region"`
	KeyIdentifierFile          string            `hcl:"key_identifier_file" json:"key_identifier_file"`
	KeyIdentifierValue         string            `hcl:"key_identifier_value" json:"key_identifier_value"`
	KeyPolicyFile              string            `hcl:"key_policy_file" json:"-"`
	KeyTags                    map[string]string `hcl:"key_tags" json:"-"`
	EnableTagBasedKeyDiscovery bool              `hcl:"enable_tag_based_key_discovery" json:"-"`
}

type keyManager struct {
	Enabled        bool    `json:"enabled"`
	PluginDataFile *string `json:"plugin_data_file"`
	HasData        bool    `json:"has_data"`
	awsKMS
}

type answer struct {
	Stage       string      `json:"stage,omitempty"` // where it failed
	Error       string      `json:"error,omitempty"`
	Server      bool        `json:"server"`
	TrustDomain string      `json:"trust_domain"`
	Health      health      `json:"health"`
	Plugins     [][2]string `json:"plugins"`
	KeyManager  *keyManager `json:"key_manager"`
}

// expand is SPIRE's -expandEnv over the request's environment.
func expand(text string, env map[string]string) string {
	return os.Expand(text, func(name string) string {
		if name == "$" {
			return "$"
		}
		return env[name]
	})
}

// keyText is an object key's text as SPIRE names plugins with it: identifier-like tokens only.
func keyText(k *ast.ObjectKey) (string, bool) {
	if !k.Token.Type.IsIdentifier() {
		return "", false
	}
	return fmt.Sprint(k.Token.Value()), true
}

// pluginNames walks the plugins section and names each plugin by the first two keys met on the
// way down; it does not look inside a plugin once named.
func pluginNames(list *ast.ObjectList) ([][2]string, error) {
	var names [][2]string
	var walk func(node ast.Node, keys []string) bool
	walk = func(node ast.Node, keys []string) bool {
		switch n := node.(type) {
		case *ast.ObjectList:
			for _, item := range n.Items {
				if !walk(item, keys) {
					return false
				}
			}
		case *ast.ObjectItem:
			path := append([]string(nil), keys...)
			for _, k := range n.Keys {
				text, ok := keyText(k)
				if !ok {
					return true // nothing below a key that is not an identifier names a plugin
				}
				path = append(path, text)
			}
			if len(path) >= 2 {
				names = append(names, [2]string{path[0], path[1]})
				return true
			}
			return walk(n.Val, path)
		case *ast.ObjectType:
			return walk(n.List, keys)
		case *ast.ListType:
			for _, elem := range n.List {
				if !walk(elem, keys) {
					return false
				}
			}
		}
		return true
	}
	walk(list, nil)
	seen := map[[2]string]bool{}
	for _, name := range names {
		if seen[name] {
			return names, fmt.Errorf("plugin %q/%q declared more than once", name[0], name[1])
		}
		seen[name] = true
	}
	return names, nil
}

func read(req request) (out answer) {
	text := req.Text
	if req.ExpandEnv {
		text = expand(text, req.Env)
	}
	var c config
	if err := hcl.Decode(&c, text); err != nil {
		return answer{Stage: "decode", Error: err.Error()}
	}
	out.Health = c.HealthChecks
	if c.Server != nil {
		out.Server = true
		out.TrustDomain = c.Server.TrustDomain
	}
	if c.Plugins == nil {
		return out
	}
	list, ok := c.Plugins.(*ast.ObjectList)
	if !ok {
		out.Stage, out.Error = "plugins", fmt.Sprintf("plugins node is %T", c.Plugins)
		return out
	}
	names, err := pluginNames(list)
	out.Plugins = names
	if err != nil {
		out.Stage, out.Error = "plugins", err.Error()
		return out
	}
	var maps []map[string]map[string]plugin
	if err := hcl.DecodeObject(&maps, c.Plugins); err != nil {
		out.Stage, out.Error = "plugins", err.Error()
		return out
	}
	for _, byType := range maps {
		p, ok := byType["KeyManager"]["aws_kms"]
		if !ok {
			continue
		}
		km := &keyManager{Enabled: p.Enabled == nil || *p.Enabled, PluginDataFile: p.PluginDataFile}
		out.KeyManager = km
		if p.PluginData != nil && p.PluginDataFile != nil {
			out.Stage, out.Error = "plugin", "only one of [plugin_data, plugin_data_file] can be used"
			return out
		}
		data := ""
		if p.PluginData != nil {
			var buf bytes.Buffer
			if err := printer.DefaultConfig.Fprint(&buf, p.PluginData); err != nil {
				out.Stage, out.Error = "plugin", err.Error()
				return out
			}
			data = buf.String()
		}
		if p.PluginDataFile != nil {
			raw, err := os.ReadFile(*p.PluginDataFile)
			if err != nil {
				out.Stage, out.Error = "plugin", err.Error()
				return out
			}
			data = string(raw)
		}
		km.HasData = data != ""
		if err := hcl.Decode(&km.awsKMS, data); err != nil {
			out.Stage, out.Error = "plugin_data", err.Error()
		}
		return out
	}
	return out
}

// answerOf runs read, turning a panic of the library (it panics on some malformed literals)
// into an error answer.
func answerOf(req request) (out answer) {
	defer func() {
		if r := recover(); r != nil {
			out = answer{Stage: "panic", Error: fmt.Sprint(r)}
		}
	}()
	return read(req)
}

func main() {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 64<<20)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		var req request
		if err := json.Unmarshal(in.Bytes(), &req); err != nil {
			fmt.Fprintln(os.Stderr, "bad request:", err)
			os.Exit(2)
		}
		if err := out.Encode(answerOf(req)); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
	}
	if err := in.Err(); err != nil && !errors.Is(err, os.ErrClosed) {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
}
