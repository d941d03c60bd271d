/* Keyboard access to code blocks and cell outputs that scroll, measured as their section nears the screen.

   pydata-sphinx-theme makes every code block and cell output that overflows focusable (tabindex 0),
   so that a keyboard can scroll it, by reading scrollWidth and scrollHeight of all of them when the
   page has loaded. Those reads lay out every section the browser had skipped (content-visibility in
   site.css): on a long notebook page that one pass was most of Lighthouse's total blocking time.
   docs/_ext/page_weight.py hands the theme's per-element check to siteTabStop below. An element in a
   skippable section stays focusable until it is measured, and it is measured once its section is
   within a screen of the viewport (the sections are observed, not the elements inside them: observing
   those costs nearly as much as measuring them). */
(() => {
  const SECTIONS = ".bd-article > section > section"; // what site.css lets the browser skip
  const measure = (el) => {
    el.tabIndex = el.scrollWidth > el.clientWidth || el.scrollHeight > el.clientHeight ? 0 : -1;
  };
  if (!("IntersectionObserver" in window)) {
    window.siteTabStop = measure;
    return;
  }
  const pending = new Map(); // section -> the elements to measure when it nears the screen
  const observer = new IntersectionObserver(
    (entries) => {
      for (const entry of entries) {
        if (!entry.isIntersecting) continue;
        observer.unobserve(entry.target);
        const elements = pending.get(entry.target) || [];
        pending.delete(entry.target);
        elements.forEach(measure);
      }
    },
    { rootMargin: "100% 0px" },
  );
  window.siteTabStop = (el) => {
    const section = el.closest(SECTIONS);
    if (!section) return measure(el);
    if (!el.hasAttribute("tabindex")) el.tabIndex = 0;
    if (!pending.has(section)) {
      pending.set(section, new Set());
      observer.observe(section); // again after a resize or new content: measured anew when in view
    }
    pending.get(section).add(el);
  };
})();
