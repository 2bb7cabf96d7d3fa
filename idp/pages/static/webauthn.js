/*
 * OneGate IdP pages: passkeys and security keys (WebAuthn Level 3), recovery-code helpers.
 *
 * Served as a file (the Content-Security-Policy allows no inline script and no inline event
 * handlers). Buttons opt in with data attributes written by the server:
 *
 *   data-webauthn="get" | "create"   the ceremony (WebAuthn L3 §5.1.4 get(), §5.1.3 create())
 *   data-options-url, data-verify-url  our JSON endpoints (same origin, POST)
 *   data-csrf                          the page's CSRF token, sent as X-CSRF-Token
 *   data-status                        id of the live region for messages
 *   data-name-input                    (create) id of the input holding the passkey's name
 *   data-recovery-section              (create) id of the hidden section showing new recovery codes
 *   data-msg-*                         messages, already translated server-side
 *
 * The server's JSON carries `publicKey` options with binary fields as base64url strings; they
 * become ArrayBuffers here, and the credential goes back in its JSON form (§5.1 toJSON()).
 * Errors from the server come with a translated `message`, shown as it is.
 */
(function () {
  "use strict";

  function fromBase64url(value) {
    var base64 = value.replace(/-/g, "+").replace(/_/g, "/");
    while (base64.length % 4) { base64 += "="; }
    var binary = atob(base64);
    var bytes = new Uint8Array(binary.length);
    for (var i = 0; i < binary.length; i++) { bytes[i] = binary.charCodeAt(i); }
    return bytes.buffer;
  }

  function toBase64url(buffer) {
    var bytes = new Uint8Array(buffer);
    var binary = "";
    for (var i = 0; i < bytes.length; i++) { binary += String.fromCharCode(bytes[i]); }
    return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function decodeDescriptors(list) {
    return (list || []).map(function (descriptor) {
      var copy = Object.assign({}, descriptor);
      copy.id = fromBase64url(descriptor.id);
      return copy;
    });
  }

  function creationOptions(options) {
    var publicKey = Object.assign({}, options);
    publicKey.challenge = fromBase64url(options.challenge);
    publicKey.user = Object.assign({}, options.user, { id: fromBase64url(options.user.id) });
    publicKey.excludeCredentials = decodeDescriptors(options.excludeCredentials);
    return publicKey;
  }

  function requestOptions(options) {
    var publicKey = Object.assign({}, options);
    publicKey.challenge = fromBase64url(options.challenge);
    publicKey.allowCredentials = decodeDescriptors(options.allowCredentials);
    return publicKey;
  }

  function credentialJSON(credential) {
    if (typeof credential.toJSON === "function") {
      try { return credential.toJSON(); } catch (ignored) { /* fall back below */ }
    }
    var response = credential.response;
    var json = {
      id: credential.id,
      rawId: toBase64url(credential.rawId),
      type: credential.type,
      authenticatorAttachment: credential.authenticatorAttachment || null,
      clientExtensionResults: credential.getClientExtensionResults ? credential.getClientExtensionResults() : {},
      response: { clientDataJSON: toBase64url(response.clientDataJSON) }
    };
    if (response.attestationObject) {
      json.response.attestationObject = toBase64url(response.attestationObject);
      json.response.transports = response.getTransports ? response.getTransports() : [];
    } else {
      json.response.authenticatorData = toBase64url(response.authenticatorData);
      json.response.signature = toBase64url(response.signature);
      json.response.userHandle = response.userHandle ? toBase64url(response.userHandle) : null;
    }
    return json;
  }

  function post(url, token, body) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "Accept": "application/json", "X-CSRF-Token": token },
      body: JSON.stringify(body || {})
    }).then(function (response) {
      return response.json().catch(function () { return { ok: false }; });
    });
  }

  function say(button, message, isError) {
    var status = document.getElementById(button.dataset.status || "");
    if (!status) { return; }
    status.textContent = message || "";
    status.classList.toggle("form-error", !!isError);
    status.classList.toggle("notice", !isError && !!message);
  }

  function showRecoveryCodes(button, codes, next) {
    var section = document.getElementById(button.dataset.recoverySection || "");
    if (!section || !codes || !codes.length) { return false; }
    var list = section.querySelector("#recovery-codes");
    list.textContent = "";
    codes.forEach(function (code) {
      var item = document.createElement("li");
      item.textContent = code;
      list.appendChild(item);
    });
    var onward = section.querySelector("#continue");
    if (onward) { onward.setAttribute("href", next); }
    // The codes are all that matters now: the rest of the page describes the state before the
    // passkey was added (and its forms would act on it), so it steps aside until "continue".
    Array.prototype.forEach.call(section.parentElement.children, function (element) {
      if (element !== section && element.tagName !== "H1") { element.hidden = true; }
    });
    section.hidden = false;
    section.focus();
    return true;
  }

  function run(button) {
    var kind = button.dataset.webauthn;
    var token = button.dataset.csrf || "";
    var body = {};
    if (kind === "create") {
      var nameInput = document.getElementById(button.dataset.nameInput || "");
      body.name = nameInput ? nameInput.value : "";
    }
    button.disabled = true;
    say(button, button.dataset.msgWorking, false);
    post(button.dataset.optionsUrl, token, body).then(function (answer) {
      if (!answer.ok) { throw { message: answer.message }; }
      if (kind === "create") {
        return navigator.credentials.create({ publicKey: creationOptions(answer.publicKey) });
      }
      return navigator.credentials.get({ publicKey: requestOptions(answer.publicKey) });
    }).then(function (credential) {
      if (!credential) { throw { message: button.dataset.msgCancelled }; }
      body.credential = credentialJSON(credential);
      return post(button.dataset.verifyUrl, token, body);
    }).then(function (answer) {
      if (!answer.ok) { throw { message: answer.message }; }
      say(button, button.dataset.msgDone, false);
      if (!showRecoveryCodes(button, answer.recovery_codes, answer.next)) {
        window.location.assign(answer.next);
      }
    }).catch(function (error) {
      var message = error && error.message;
      if (error && (error.name === "NotAllowedError" || error.name === "AbortError")) {
        message = button.dataset.msgCancelled;
      } else if (error && error.name === "InvalidStateError") {
        message = button.dataset.msgDuplicate || button.dataset.msgFailed;
      } else if (!message || (error && error.name)) {
        message = button.dataset.msgFailed;
      }
      say(button, message, true);
      button.disabled = false;
    });
  }

  function setUp() {
    var supported = !!(window.PublicKeyCredential && navigator.credentials);
    document.querySelectorAll("[data-webauthn]").forEach(function (button) {
      if (!supported) {
        say(button, button.dataset.msgUnsupported, true);
        return;
      }
      button.hidden = false;
      button.addEventListener("click", function (event) {
        event.preventDefault();
        run(button);
      });
    });
    document.querySelectorAll("[data-action=print]").forEach(function (button) {
      button.hidden = false;
      button.addEventListener("click", function () { window.print(); });
    });
    document.querySelectorAll("[data-action=copy]").forEach(function (button) {
      if (!navigator.clipboard) { return; }
      button.hidden = false;
      button.addEventListener("click", function () {
        var list = document.getElementById(button.dataset.copyTarget || "");
        var codes = Array.prototype.map.call(list.querySelectorAll("li"), function (item) {
          return item.textContent.trim();
        });
        navigator.clipboard.writeText(codes.join("\n")).then(function () {
          button.textContent = button.dataset.msgCopied;
        });
      });
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", setUp);
  } else {
    setUp();
  }
})();
