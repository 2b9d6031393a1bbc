// ntv's page script: hover or click a completion token to see its recorded distribution; hover
// or click an attribution target to colour the context by its scores. Data: #ntv-data.
(function () {
  'use strict';
  var el = document.getElementById('ntv-data');
  var data = el ? JSON.parse(el.textContent) : null;
  var page = document.body.dataset.page;

  function fmt(x) {
    if (x === 0) return '0';
    if (Math.abs(x) < 1e-3) return x.toExponential(2);
    return x.toFixed(4);
  }
  function node(tag, cls, text) {
    var n = document.createElement(tag);
    if (cls) n.className = cls;
    if (text !== undefined) n.textContent = text; // never innerHTML: token texts are data
    return n;
  }
  function bar(cls, p) {
    var b = node('span', 'bar ' + cls);
    b.style.width = (100 * Math.max(0, Math.min(1, p))).toFixed(1) + '%';
    return b;
  }

  // The same rows as parts::dist_table on the Rust side.
  function distTable(d) {
    var frag = document.createDocumentFragment();
    var t = node('table', 'dist');
    var head = node('tr');
    ['token', 'p_base', 'p_final', '', 'cut'].forEach(function (h) { head.appendChild(node('th', '', h)); });
    t.appendChild(node('thead')).appendChild(head);
    var body = t.appendChild(node('tbody'));
    d.c.forEach(function (c) {
      // [display, p_base, p_final, cut_by, valid, special, id]
      var tr = node('tr');
      if (c[6] === d.sel) tr.classList.add('sel');
      if (c[2] <= 0) tr.classList.add('cut');
      if (!c[4]) tr.classList.add('invalid');
      var tok = node('span', 'tok' + (c[5] ? ' special' : ''), c[0]);
      tok.title = 'id ' + c[6];
      tr.appendChild(node('td')).appendChild(tok);
      tr.appendChild(node('td', 'num', fmt(c[1])));
      tr.appendChild(node('td', 'num', fmt(c[2])));
      var bars = tr.appendChild(node('td', 'bars'));
      bars.appendChild(bar('base', c[1]));
      bars.appendChild(bar('fin', c[2]));
      tr.appendChild(node('td', '', (c[4] ? '' : 'invalid ') + (c[3] || '')));
      body.appendChild(tr);
    });
    frag.appendChild(t);
    var info = 'rest: p_base ' + fmt(d.ob) + ', p_final ' + fmt(d.of) + ' · kept ' + d.kept;
    if (d.valid !== null && d.valid !== undefined) info += ' · valid ' + d.valid;
    info += ' · entropy ' + d.hb.toFixed(2) + ' → ' + d.hf.toFixed(2) + ' bits';
    if (d.by) info += ' · ' + d.by;
    if (d.con) info += ' · constraint ' + d.con;
    frag.appendChild(node('p', 'muted', info));
    return frag;
  }

  function tokensPage() {
    var title = document.getElementById('dist-step');
    var body = document.getElementById('dist-body');
    var pinned = null;
    function show(tok) {
      var key = tok.dataset.step;
      var d = key === 'next' ? data.next : data.steps[Number(key)];
      if (!d) return;
      document.querySelectorAll('.tok.cur').forEach(function (t) { t.classList.remove('cur'); });
      tok.classList.add('cur');
      title.textContent = ' ' + (key === 'next' ? 'next token' : 'step ' + key);
      body.replaceChildren(distTable(d));
    }
    document.querySelectorAll('.tok[data-step]').forEach(function (tok) {
      tok.addEventListener('mouseenter', function () { if (!pinned) show(tok); });
      tok.addEventListener('focus', function () { if (!pinned) show(tok); });
      tok.addEventListener('click', function () {
        if (pinned) pinned.classList.remove('pinned');
        pinned = pinned === tok ? null : tok;
        if (pinned) pinned.classList.add('pinned');
        show(tok);
      });
    });
  }

  // The same colours as parts::score_colour on the Rust side.
  function scoreColour(s, max, signed) {
    var a = max > 0 ? Math.min(1, Math.abs(s) / max) : 0;
    var rgb = signed ? (s < 0 ? '38,110,220' : '220,50,47') : '230,120,20';
    return 'rgba(' + rgb + ',' + a.toFixed(3) + ')';
  }

  function attributePage() {
    document.querySelectorAll('section.attr').forEach(function (sec) {
      var g = data[Number(sec.dataset.group)];
      if (!g) return;
      var ctx = sec.querySelectorAll('.ctx .tok');
      var which = sec.querySelector('.which');
      var targets = sec.querySelectorAll('.targets .tok.target');
      var rows = sec.querySelectorAll('table.heat tbody tr');
      var pinned = null;
      function select(i) {
        var t = g.targets[i];
        if (!t) return;
        targets.forEach(function (x, j) { x.classList.toggle('active', j === i); });
        rows.forEach(function (x, j) { x.classList.toggle('active', j === i); });
        ctx.forEach(function (c, j) {
          var s = t.s[j];
          var has = s !== undefined;
          c.classList.toggle('none', !has);
          c.style.background = has ? scoreColour(s, g.max, g.signed) : '';
          c.dataset.score = has ? String(s) : '';
        });
        if (which) which.textContent = '(scores for target ' + targets[i].textContent + ')';
        sec.dataset.selected = String(i);
      }
      function wire(x, i) {
        x.addEventListener('mouseenter', function () { if (pinned === null) select(i); });
        x.addEventListener('click', function () { pinned = pinned === i ? null : i; select(i); });
      }
      targets.forEach(wire);
      sec.querySelectorAll('table.heat th.row .tok').forEach(wire);
      select(0);
    });
  }

  if (page === 'tokens' && data) tokensPage();
  if (page === 'attribute' && data) attributePage();
  window.ntvReady = true;
})();
