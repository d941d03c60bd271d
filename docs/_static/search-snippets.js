/* Search page only (docs/_templates/layout.html): result snippets come from the article text.
   Sphinx's searchtools.js takes the text of [role="main"], which in this theme also holds the
   page's buttons ("Light Dark"), so snippets showed interface text instead of the match. */
(() => {
  if (typeof Search === "undefined") return;
  Search.htmlToText = (htmlString, anchor) => {
    const doc = new DOMParser().parseFromString(htmlString, "text/html");
    doc.querySelectorAll(".headerlink, script, style").forEach((el) => el.remove());
    const article = doc.querySelector('[role="main"] article') || doc.querySelector('[role="main"]');
    if (!article) return "";
    const block = (anchor && article.querySelector(anchor)) || article;
    return block.textContent.replace(/\s+/g, " ");
  };
})();
